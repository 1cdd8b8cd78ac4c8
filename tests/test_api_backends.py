"""The admin API on each storage backend: a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import subprocess
from pathlib import Path

from admin_support import AdminApi

from lepton.cluster import lepton_command


def test_api_round_trip_on_every_backend(database_url: str, tmp_path: Path) -> None:
    with AdminApi.start(tmp_path / "coordinator", None, database_url=database_url) as api:
        tenant = api.tenant("bank")
        node = api.node(tenant, "branch")
        federation = api.federation(
            "credit", [node["id"]], min_participants=1, secure_aggregation={"enabled": False}
        )

        assert api.ok("GET", f"/nodes/{node['id']}", tenant.headers)["name"] == "branch"
        assert api.ok("GET", f"/federations/{federation['id']}", tenant.headers)["name"] == "credit"
        assert api.call("POST", "/tenants", api.admin, json={"name": "bank"}).status_code == 409
        enroll = api.call(
            "POST", "/nodes/enroll", {}, json={"token": node["enrollment_token"], "public_key": "x"}
        )
        assert enroll.status_code == 422
        assert api.ok("GET", "/audit/verification", api.admin)["ok"] is True


def test_create_admin_key_refuses_an_unsupported_database(tmp_path: Path) -> None:
    done = subprocess.run(
        lepton_command(
            "coordinator",
            "create-admin-key",
            "--data-dir",
            str(tmp_path),
            "--database-url",
            "mysql://root@localhost/lepton",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 2
    assert "invalid_database_url" in done.stderr
    assert "sqlite and postgresql" in done.stderr


def test_create_admin_key_prints_a_working_key(tmp_path: Path) -> None:
    done = subprocess.run(
        lepton_command("coordinator", "create-admin-key", "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    key = done.stdout.strip()

    with AdminApi.start(tmp_path, None) as api:
        me = api.call("GET", "/me", {"Authorization": f"Bearer {key}"})
    assert me.json()["role"] == "platform_admin"
