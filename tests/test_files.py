"""`lepton_fl.files.write_file`: the one way keys, secrets, manifests and outputs are written."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_fl.files import write_file


@pytest.fixture
def strict_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_file_gets_exactly_its_mode_whatever_the_umask(
    tmp_path: Path, strict_umask: None
) -> None:
    write_file(tmp_path / "manifest.json", b"{}", mode=0o644)
    write_file(tmp_path / "key.pem", b"secret", mode=0o600)
    assert _mode(tmp_path / "manifest.json") == 0o644  # the umask alone would give 0600
    assert _mode(tmp_path / "key.pem") == 0o600
    assert (tmp_path / "key.pem").read_bytes() == b"secret"


def test_an_existing_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"the old key")
    with pytest.raises(FileExistsError):
        write_file(path, b"a new key", mode=0o600)
    assert path.read_bytes() == b"the old key"


def test_replace_swaps_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_bytes(b"old")
    write_file(path, b"new", mode=0o640, replace=True)
    assert path.read_bytes() == b"new"
    assert _mode(path) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_symbolic_link_planted_at_the_path_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    link = tmp_path / "key.pem"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_file(link, b"secret", mode=0o600)
    write_file(link, b"secret", mode=0o600, replace=True)  # replaces the link itself
    assert not link.is_symlink()
    assert link.read_bytes() == b"secret"
    assert victim.read_bytes() == b"untouched"


@pytest.mark.parametrize("replace", [False, True])
def test_a_failed_write_leaves_no_partial_file(tmp_path: Path, replace: bool) -> None:
    path = tmp_path / "key.pem"
    if replace:
        path.write_bytes(b"the old key")
    not_bytes: Any = "not bytes"
    with pytest.raises(TypeError):
        write_file(path, not_bytes, mode=0o600, replace=replace)
    if replace:
        assert path.read_bytes() == b"the old key"
        assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]
    else:
        assert not path.exists()
