"""The node's executor without a cluster: the FAB wall, the Flower pin, the poll schedule.

The FAB check runs on bundles built by Flower's own `build_fab_from_files` (what `flwr run`
submits) and on crafted zips; the end-to-end behaviour (an evil FAB submitted to a real
SuperLink) is in `test_node_executor_e2e.py`.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import flwr
import pytest
from flwr.cli.build import build_fab_from_disk, build_fab_from_files

from client_node.executor import HEARTBEAT_INTERVAL_S, PollSchedule
from client_node.fab_check import EXPECTED_CLIENTAPP, FabChecker, check_fab
from client_node.supernode import new_superexec_secret, superexec_secret_path, supernode_command
from coordinator.superlink import fab_directory
from lepton_fl.flower_pins import FlowerVersionError, check_flower_version

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "lepton-federation"
version = "0.1.0"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "lepton"

[tool.flwr.app.components]
serverapp = "coordinator.fl.server_app:app"
clientapp = "{clientapp}"
"""


def _fab(clientapp: str = EXPECTED_CLIENTAPP, extra: dict[str, bytes] | None = None) -> bytes:
    files: dict[str, bytes | Path] = {
        "pyproject.toml": PYPROJECT.format(clientapp=clientapp).encode()
    }
    files.update(extra or {})
    return build_fab_from_files(files)[0]


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def test_the_coordinators_own_fab_is_accepted() -> None:
    assert check_fab(build_fab_from_disk(fab_directory())).accepted


def test_a_bundle_naming_our_component_and_nothing_else_is_accepted() -> None:
    assert check_fab(_fab()).accepted


def test_a_foreign_clientapp_is_refused_with_its_name() -> None:
    verdict = check_fab(_fab("evil_client:app"))

    assert not verdict.accepted
    assert "'evil_client:app'" in verdict.reason
    assert EXPECTED_CLIENTAPP in verdict.reason


def test_our_component_name_with_a_python_file_beside_it_is_refused() -> None:
    """The name alone is not enough: a shipped `client_node/relay.py` could shadow ours."""
    verdict = check_fab(_fab(extra={"client_node/relay.py": b"import os\n"}))

    assert not verdict.accepted
    assert "client_node/relay.py" in verdict.reason


def test_any_extra_file_is_refused() -> None:
    verdict = check_fab(_fab(extra={"README.md": b"# hello\n"}))

    assert not verdict.accepted
    assert "README.md" in verdict.reason


@pytest.mark.parametrize(
    ("bundle", "why"),
    [
        (b"not a zip at all", "not a readable zip"),
        (_zip({".info/CONTENT": b""}), "no pyproject.toml"),
        (_zip({"pyproject.toml": b"[tool.flwr.app\n"}), "not valid TOML"),
        (_zip({"pyproject.toml": b"[project]\nname = 'x'\n"}), "None"),
        (_zip({"pyproject.toml": b"\xff\xfe"}), "UTF-8"),
        (_zip({"pyproject.toml": b"x = 1\n" * 20_000}), "larger than"),
    ],
)
def test_malformed_bundles_are_refused_with_a_reason(bundle: bytes, why: str) -> None:
    verdict = check_fab(bundle)

    assert not verdict.accepted
    assert why in verdict.reason
    assert verdict.reason.startswith("The node refused the run's Flower app")


def test_a_duplicated_pyproject_is_refused() -> None:
    """Two entries of one name: which one a reader picks is not something to rely on."""
    good = PYPROJECT.format(clientapp=EXPECTED_CLIENTAPP).encode()
    buffer = io.BytesIO()
    evil = PYPROJECT.format(clientapp="evil:app").encode()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("pyproject.toml", good)
        with pytest.warns(UserWarning, match="Duplicate name"):
            bundle.writestr("pyproject.toml", evil)

    assert not check_fab(buffer.getvalue()).accepted


def test_the_checker_caches_its_verdict_per_bundle() -> None:
    checker = FabChecker()
    good, bad = _fab(), _fab("evil_client:app")

    assert checker(good).accepted
    assert not checker(bad).accepted
    assert checker(good) is checker(good)
    assert len(checker._verdicts) == 2


def test_the_installed_flower_is_the_pinned_minor_version() -> None:
    """The executor speaks Flower's internal Runtime API: a Flower upgrade must be deliberate."""
    assert flwr.__version__.startswith("1.42.")
    check_flower_version()


@pytest.mark.parametrize("version", ["1.41.0", "1.43.0", "2.42.0", "1.4.2"])
def test_another_flower_version_stops_the_node_with_a_clear_message(version: str) -> None:
    with pytest.raises(FlowerVersionError, match=rf"needs flwr 1\.42\.x, but flwr {version}"):
        check_flower_version(version)


def test_patch_releases_of_the_pinned_version_are_accepted() -> None:
    check_flower_version("1.42.7")


def test_polling_is_fast_only_while_tasks_keep_coming() -> None:
    schedule = PollSchedule()

    assert schedule.wait_after(0.5) == 0.1
    assert schedule.wait_after(11.0) == 1.0
    assert schedule.wait_after(float("inf")) == 1.0


def test_heartbeats_follow_flowers_period() -> None:
    assert pytest.approx(20.0) == HEARTBEAT_INTERVAL_S


def test_the_supernode_runs_no_clientapp_and_guards_its_task_queue(tmp_path: Path) -> None:
    from client_node.settings import load_node_settings

    (tmp_path / "ca.pem").write_text("")
    (tmp_path / "key").write_text("")
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\nname = "n1"\nstate_dir = "state"\n\n'
        '[data]\ntask = "breast_cancer"\npartition = "site-0-of-3"\n\n'
        "[privacy]\nepsilon_budget = 8.0\n\n"
        '[superlink]\naddress = "127.0.0.1:9093"\nroot_certificates = "ca.pem"\n\n'
        '[auth]\nprivate_key = "key"\n'
    )
    settings = load_node_settings(config)

    argv = supernode_command(settings)
    secret = new_superexec_secret(settings)
    again = new_superexec_secret(settings)

    assert argv[argv.index("--isolation") + 1] == "process"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--superexec-auth-secret-file") + 1] == str(
        superexec_secret_path(settings)
    )
    path = superexec_secret_path(settings)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == again != secret
    assert len(secret) == 32


def test_a_foreign_clientapp_shipped_with_its_code_is_refused_for_both() -> None:
    verdict = check_fab(_fab("evil_client:app", extra={"evil_client.py": b"import os\n"}))

    assert not verdict.accepted
    assert "evil_client.py" in verdict.reason
    assert "'evil_client:app'" in verdict.reason
