"""The coordinator's walls, unit by unit: the Fleet front's configuration (checked by real
nginx), the app-bundle check, and the ServerApp's environment. The end-to-end attacks on
them are in tests/test_federation_e2e.py."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from coordinator.fl.launcher import CA_ENV, RUNTIME_ENV, TOKEN_ENV, serverapp_environment
from coordinator.fleet_front import FLEET_PREFIX, FrontSettings, nginx_config, nginx_executable
from coordinator.superlink import fab_directory
from lepton_fl.app_bundle import AppBundleError, check_app_bundle
from lepton_fl.crypto import create_pki


def _front(tmp_path: Path) -> FrontSettings:
    pki = create_pki(tmp_path / "pki", node_names=[], overwrite=True)
    return FrontSettings(
        listen_host="127.0.0.1",
        listen_port=19443,
        upstream_port=19091,
        server_certificate=pki.server_certificate,
        server_key=pki.server_key,
        ca_certificate=pki.ca_certificate,
        directory=tmp_path / "front",
        log_dir=tmp_path / "logs",
    )


def test_front_config_forwards_only_the_fleet_api(tmp_path: Path) -> None:
    text = nginx_config(_front(tmp_path))

    locations = [line.strip() for line in text.splitlines() if line.strip().startswith("location")]
    assert locations == [f"location {FLEET_PREFIX} {{", "location = /health {", "location / {"]
    assert text.count("proxy_pass") == 1
    assert "return 404;" in text.split("location / {", 1)[1]
    assert "proxy_ssl_verify on;" in text


def test_real_nginx_accepts_the_generated_config(tmp_path: Path) -> None:
    settings = _front(tmp_path)
    for folder in (settings.directory / "tmp", settings.log_dir):
        folder.mkdir(parents=True)
    config = settings.directory / "nginx.conf"
    config.write_text(nginx_config(settings))

    done = subprocess.run(
        [
            nginx_executable(),
            "-t",
            "-p",
            str(settings.directory),
            "-c",
            str(config),
            "-e",
            "stderr",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr


def _bundle(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def _pyproject(serverapp: str, clientapp: str) -> str:
    return f'[tool.flwr.app.components]\nserverapp = "{serverapp}"\nclientapp = "{clientapp}"\n'


def test_our_own_bundle_passes_for_both_components() -> None:
    content = build_fab_from_disk(fab_directory())

    check_app_bundle(content, components=("serverapp", "clientapp"))


@pytest.mark.parametrize(
    ("files", "component", "fragment"),
    [
        (
            {"pyproject.toml": _pyproject("evil:app", "client_node.relay:app")},
            "serverapp",
            "'evil:app'",
        ),
        (
            {"pyproject.toml": _pyproject("coordinator.fl.server_app:app", "evil:app")},
            "clientapp",
            "'evil:app'",
        ),
        (
            {
                "pyproject.toml": _pyproject(
                    "coordinator.fl.server_app:app", "client_node.relay:app"
                ),
                "coordinator/fl/server_app.py": "print('shadowing the installed module')",
            },
            "serverapp",
            "coordinator/fl/server_app.py",
        ),
        ({"README.md": "no project file"}, "serverapp", "README.md"),
        ({"pyproject.toml": "not = [valid"}, "clientapp", "not valid TOML"),
        ({"pyproject.toml": "tool = 1\n"}, "serverapp", "None"),
    ],
)
def test_foreign_or_code_carrying_bundles_are_refused(
    files: dict[str, str], component: str, fragment: str
) -> None:
    with pytest.raises(AppBundleError) as refused:
        check_app_bundle(_bundle(files), components=(component,))  # type: ignore[arg-type]

    assert fragment in str(refused.value)


def test_garbage_is_refused_not_crashed_on() -> None:
    with pytest.raises(AppBundleError):
        check_app_bundle(b"not a zip at all", components=("serverapp",))


def test_serverapp_environment_carries_no_secret_of_the_coordinator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGPASSWORD", "hunter2")
    monkeypatch.setenv("LEPTON_ADMIN_KEY", "lfk_secret")
    monkeypatch.setenv("PATH", "/usr/bin")

    env = serverapp_environment(token="t0k", runtime_api="127.0.0.1:1", ca_certificate=tmp_path)

    assert "PGPASSWORD" not in env
    assert "LEPTON_ADMIN_KEY" not in env
    assert env[TOKEN_ENV] == "t0k"
    assert env[RUNTIME_ENV] == "127.0.0.1:1"
    assert env[CA_ENV] == str(tmp_path)
    assert env["PATH"] == "/usr/bin"
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
