"""Bad input at the command line ends in one actionable paragraph and exit code 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton.cluster import lepton_command
from lepton_fl.crypto import PKIPaths, create_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIPaths:
    return create_pki(tmp_path_factory.mktemp("pki"), node_names=["clinic"])


def _lepton(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lepton_command(*args), capture_output=True, text=True, timeout=120, check=False
    )


def _node_toml(pki: PKIPaths, tmp_path: Path, **overrides: str) -> Path:
    values = {
        "partition": '"site-0-of-3"',
        "root_certificates": f'"{pki.ca_certificate}"',
        "private_key": f'"{pki.nodes["clinic"].private_key}"',
        "epsilon_budget": "3.0",
    }
    values.update(overrides)
    text = (
        f'[node]\nname = "clinic"\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[data]\ntask = "breast_cancer"\npartition = {values["partition"]}\n\n'
        f'[privacy]\nepsilon_budget = {values["epsilon_budget"]}\nfederations = ["f"]\n\n'
        '[superlink]\naddress = "127.0.0.1:1"\n'
        f"root_certificates = {values['root_certificates']}\n\n"
        f"[auth]\nprivate_key = {values['private_key']}\n"
    )
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def _assert_user_error(done: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for phrase in phrases:
        assert phrase in done.stderr, done.stderr


def test_node_start_missing_config_says_which_file(tmp_path: Path) -> None:
    done = _lepton("node", "start", "--config", str(tmp_path / "nope.toml"))
    _assert_user_error(done, "nope.toml does not exist")


def test_node_start_malformed_toml_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text("[node\nname = ")
    _assert_user_error(_lepton("node", "start", "--config", str(bad)), "is not valid TOML")


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ({"epsilon_budget": "-1"}, "[privacy.epsilon_budget]"),
        ({"epsilon_budget": '"lots"'}, "[privacy.epsilon_budget]"),
        ({"root_certificates": '"/no/such/ca.pem"'}, "superlink.root_certificates"),
        ({"private_key": '"/no/such/key"'}, "auth.private_key"),
    ],
)
def test_node_start_bad_field_is_named(
    pki: PKIPaths, tmp_path: Path, override: dict[str, str], phrase: str
) -> None:
    config = _node_toml(pki, tmp_path, **override)
    _assert_user_error(_lepton("node", "start", "--config", str(config)), phrase)


def test_node_start_unknown_partition_names_it(pki: PKIPaths, tmp_path: Path) -> None:
    config = _node_toml(pki, tmp_path, partition='"site-9-of-3"')
    done = _lepton("node", "start", "--config", str(config))
    _assert_user_error(done, "site-9-of-3")


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_coordinator_port_in_use_is_reported(pki: PKIPaths, tmp_path: Path, busy_port: int) -> None:
    done = _lepton(
        "coordinator",
        "start",
        "--data-dir",
        str(tmp_path),
        "--pki-dir",
        str(pki.directory),
        "--port",
        str(busy_port),
    )
    _assert_user_error(done, f"Port {busy_port}", "already in use")


def test_coordinator_missing_pki_says_how_to_make_one(tmp_path: Path) -> None:
    done = _lepton(
        "coordinator", "start", "--data-dir", str(tmp_path), "--pki-dir", str(tmp_path / "none")
    )
    _assert_user_error(done, "lepton certs init")


def test_certs_node_key_is_made_once_and_named_safely(tmp_path: Path) -> None:
    made = _lepton("certs", "node-key", "--dir", str(tmp_path), "--node", "clinic")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "nodes" / "clinic.pub").read_text().startswith("ecdsa-sha2-nistp384 ")

    again = _lepton("certs", "node-key", "--dir", str(tmp_path), "--node", "clinic")
    _assert_user_error(again, "already exists", "--overwrite")

    upper = _lepton("certs", "node-key", "--dir", str(tmp_path), "--node", "Clinic")
    _assert_user_error(upper, "lower-case")


def test_node_start_without_the_node_extra_says_what_to_install(
    pki: PKIPaths, tmp_path: Path
) -> None:
    """A coordinator-only installation (no torch, no Opacus) refuses to start a node, before
    anything is imported, with the extra to install."""
    config = _node_toml(pki, tmp_path)
    script = (
        "import sys\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'opacus'}:\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "from lepton.cli import main\n"
        f"sys.argv = ['lepton', 'node', 'start', '--config', {str(config)!r}]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 2, done.stderr
    assert "error [node_extra_missing]" in done.stderr
    assert "torch, opacus" in done.stderr
    assert "lepton-fl[node]" in done.stderr
