"""node.toml: paths resolve against the file, every problem names its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from client_node.runner import flower_exit_code
from client_node.settings import NodeConfigError, load_node_settings

VALID = """
[node]
name = "clinic"
state_dir = "state"

[data]
task = "breast_cancer"
partition = "site-0-of-3"

[privacy]
epsilon_budget = 4.0
federations = ["f"]

[superlink]
address = "127.0.0.1:9093"
root_certificates = "pki/ca.pem"

[auth]
private_key = "pki/clinic"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.pem").write_text("ca")
    (tmp_path / "pki" / "clinic").write_text("key")
    path = tmp_path / "node.toml"
    path.write_text(VALID)
    return path


def test_settings_relative_paths_resolve_against_the_file(config: Path) -> None:
    settings = load_node_settings(config)

    assert settings.node.state_dir == config.parent / "state"
    assert settings.superlink.root_certificates == config.parent / "pki" / "ca.pem"
    assert settings.dataset_id == "breast_cancer:site-0-of-3"
    assert settings.node.torch_threads == 1
    assert settings.privacy.accountant == "rdp"


@pytest.mark.parametrize(
    ("old", "new", "phrase"),
    [
        ('address = "127.0.0.1:9093"', 'address = "no-port"', "[superlink.address]"),
        ('name = "clinic"', 'name = "Clinic One"', "[node.name]"),
        ('state_dir = "state"', 'state_dir = "state"\ndevice = "gpu"', "[node.device]"),
        ("epsilon_budget = 4.0", "epsilon_budget = 0", "[privacy.epsilon_budget]"),
        ('partition = "site-0-of-3"', "", "[data.partition]"),
        ("[auth]", "[auth]\nextra = 1", "[auth.extra]"),
    ],
)
def test_settings_invalid_field_is_named(config: Path, old: str, new: str, phrase: str) -> None:
    config.write_text(VALID.replace(old, new))

    with pytest.raises(NodeConfigError) as caught:
        load_node_settings(config)

    assert phrase in str(caught.value)
    assert str(config) in str(caught.value)


def test_settings_state_dir_that_is_a_file_is_refused(config: Path) -> None:
    (config.parent / "state").write_text("oops")

    with pytest.raises(NodeConfigError, match="is a file"):
        load_node_settings(config)


@pytest.mark.parametrize(
    ("code", "log", "expected"),
    [
        (1, "ERROR :     Exit Code: 305\nFailed to initialize", 305),
        (1, "no code here", 1),
        (0, "Exit Code: 100\n... Exit Code: 305", 305),
    ],
)
def test_flower_exit_code_read_from_log(code: int, log: str, expected: int) -> None:
    assert flower_exit_code(code, log) == expected


def test_pinned_coordinator_key_resolves_against_the_file(config: Path) -> None:
    (config.parent / "pki" / "coordinator.pem").write_text("pem")
    config.write_text(VALID + '\n[coordinator]\npublic_key = "pki/coordinator.pem"\n')

    settings = load_node_settings(config)

    assert settings.coordinator is not None
    assert settings.coordinator.public_key == config.parent / "pki" / "coordinator.pem"


def test_a_missing_pinned_coordinator_key_is_named(config: Path) -> None:
    config.write_text(VALID + '\n[coordinator]\npublic_key = "coordinator.pem"\n')

    with pytest.raises(NodeConfigError) as caught:
        load_node_settings(config)

    assert caught.value.code == "missing_file"
    assert "coordinator.public_key" in str(caught.value)
    assert "signing public key" in str(caught.value)


def test_a_node_without_a_pinned_key_loads_but_has_none(config: Path) -> None:
    """It starts (check-data and the ledger report still work); its trainer refuses every
    run with run_no_pinned_key (tests/test_run_authorization.py)."""
    assert load_node_settings(config).coordinator is None
