"""Runs, the ledger and releases through the API, with a real SuperLink.

Runs are really submitted (`flwr run`) and stopped (`flwr stop`); no node processes run here
(the end-to-end test has them), so the rounds of a finished run are written by the
ServerApp's own journal/ledger sink (`play_serverapp`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from admin_support import AdminApi, Tenant, play_serverapp

from coordinator.superlink import SuperLink
from lepton_fl.config import FederationSpec
from lepton_fl.crypto.checkpoint import verify_checkpoint
from lepton_fl.crypto.release import verify_signed_manifest


@dataclass
class World:
    api: AdminApi
    a: Tenant
    b: Tenant
    nodes: list[dict[str, Any]]
    stingy: dict[str, Any]
    run: dict[str, Any]
    release: dict[str, Any]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, superlink: SuperLink) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("runs")
    with AdminApi.start(root / "coordinator", superlink) as api:
        a, b = api.tenant("tenant-a"), api.tenant("tenant-b")
        nodes = [api.enrolled_node(a, f"site-{i}") for i in range(3)]
        stingy = api.enrolled_node(a, "stingy", epsilon_budget=1.0)
        federation = api.federation("main", [n["id"] for n in nodes])
        run = api.ok("POST", f"/federations/{federation['id']}/runs", api.admin)
        play_serverapp(api, run["id"], rounds=2)
        release = api.ok("POST", f"/runs/{run['id']}/releases", api.admin, json={})
        yield World(api, a, b, nodes, stingy, run, release)


def test_run_over_a_members_budget_is_refused_naming_node_and_numbers(world: World) -> None:
    api = world.api
    members = [n["id"] for n in world.nodes[:2]] + [world.stingy["id"]]
    federation = api.federation("too-greedy", members)

    response = api.call("POST", f"/federations/{federation['id']}/runs", api.admin)

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "budget_exceeded"
    assert "stingy" in body["message"]
    assert "epsilon 2" in body["message"]
    assert "budget 1" in body["message"]


def test_run_with_too_few_members_is_refused(world: World) -> None:
    api = world.api
    federation = api.federation("lonely", [world.nodes[0]["id"]])

    response = api.call("POST", f"/federations/{federation['id']}/runs", api.admin)

    assert response.status_code == 409
    assert response.json()["code"] == "not_enough_members"


def test_two_federations_run_at_once_but_one_federation_runs_once(world: World) -> None:
    api = world.api
    ids = [n["id"] for n in world.nodes]
    first = api.federation("parallel-1", ids)
    second = api.federation("parallel-2", ids)

    run_1 = api.ok("POST", f"/federations/{first['id']}/runs", api.admin)
    run_2 = api.ok("POST", f"/federations/{second['id']}/runs", api.admin)
    again = api.call("POST", f"/federations/{first['id']}/runs", api.admin)

    assert run_1["state"] in ("submitted", "running")
    assert run_1["flower_run_id"]
    assert run_2["state"] in ("submitted", "running")
    assert run_1["flower_run_id"] != run_2["flower_run_id"]
    assert again.status_code == 409
    assert again.json()["code"] == "run_already_running"

    stopped = api.ok("POST", f"/runs/{run_2['id']}/stop", api.admin)
    assert stopped["state"] == "stopped"
    api.ok("POST", f"/runs/{run_1['id']}/stop", api.admin)
    stop_again = api.call("POST", f"/runs/{run_1['id']}/stop", api.admin)
    assert stop_again.status_code == 200  # stopping is idempotent: the final state, unchanged
    assert stop_again.json()["state"] == "stopped"
    assert (
        stop_again.json()["finished_at"]
        == api.ok("GET", f"/runs/{run_1['id']}", api.admin)["finished_at"]
    )


def test_finished_run_reports_rounds_and_participants(world: World) -> None:
    api = world.api

    run = api.ok("GET", f"/runs/{world.run['id']}", world.a.headers)
    rounds = api.ok("GET", f"/runs/{world.run['id']}/rounds", world.a.headers)

    assert run["state"] == "finished"
    assert run["rounds_completed"] == 2
    assert [r["round"] for r in rounds] == [1, 2]
    assert sorted(rounds[0]["participants"]) == sorted(n["id"] for n in world.nodes)


def test_ledger_reports_spent_remaining_and_history(world: World) -> None:
    api = world.api
    node = world.nodes[0]

    report = api.ok("GET", f"/ledger/nodes/{node['id']}", world.a.headers)
    scoped = api.ok(
        "GET",
        f"/ledger/nodes/{node['id']}",
        world.a.headers,
        params={"federation_id": world.run["federation_id"]},
    )

    assert [h["round"] for h in report["history"]] == [1, 2]
    assert report["epsilon_spent"] == pytest.approx(report["epsilon_reported"])
    assert report["epsilon_remaining"] == pytest.approx(8.0 - report["epsilon_spent"])
    assert scoped["federations"][0]["rounds"] == 2


def test_reconcile_reports_a_node_ledger_that_differs(world: World) -> None:
    api = world.api
    node = world.nodes[0]
    flower_run_id = api.ok("GET", f"/runs/{world.run['id']}", api.admin)["flower_run_id"]
    rows = [
        {
            "flower_run_id": flower_run_id,
            "round": rnd,
            "noise_multiplier": 1.1,
            "sample_rate": 0.1,
            "steps": 20,
        }
        for rnd in (1, 2)
    ]

    same = api.ok(
        "POST", f"/ledger/nodes/{node['id']}/reconcile", api.admin, json={"entries": rows}
    )
    rows[1]["steps"] = 21
    differs = api.ok(
        "POST", f"/ledger/nodes/{node['id']}/reconcile", api.admin, json={"entries": rows}
    )

    assert same == {"ok": True, "mismatches": [], "repaired": []}
    assert not differs["ok"]
    assert differs["mismatches"][0]["round"] == 2
    assert "steps=21" in differs["mismatches"][0]["problem"]


def test_release_manifest_is_signed_and_complete(world: World) -> None:
    api = world.api
    key = api.ok("GET", "/signing-key", {})
    signed = world.release["signed_manifest"]

    manifest = verify_signed_manifest(signed, key["public_key_pem"])

    assert world.release["version"] == 1
    assert manifest["run"]["id"] == world.run["id"]
    assert manifest["rounds"] == 2
    assert {p["name"] for p in manifest["participants"]} == {"site-0", "site-1", "site-2"}
    assert manifest["differential_privacy"]["target_epsilon"] == 2.0
    assert manifest["secure_aggregation"]["enabled"] is True
    assert set(manifest["epsilon_spent"]) == {n["id"] for n in world.nodes}
    assert manifest["model_digest"] == world.release["model_digest"]
    spec = FederationSpec.model_validate(manifest["federation"]["spec"])  # what a node rebuilds
    assert spec.digest() == manifest["federation"]["spec_digest"]
    assert spec.privacy.target_epsilon == 2.0
    # the release carries the audit log's signed head as it stood when it was published
    checkpoint = verify_checkpoint(manifest["audit_checkpoint"], key["public_key_pem"])
    events = api.ok("GET", "/audit/events", api.admin, params={"limit": 1000})
    release_event = next(e for e in events if e["action"] == "release.create")
    assert checkpoint.seq == release_event["seq"] - 1
    assert checkpoint.head_hash == release_event["prev_hash"]


def test_release_download_matches_its_digest_and_verifies(world: World) -> None:
    api = world.api
    release_id = world.release["id"]

    model = api.call("GET", f"/releases/{release_id}/model", world.a.headers)
    manifest = api.ok("GET", f"/releases/{release_id}/manifest", world.a.headers)
    verdict = api.ok("GET", f"/releases/{release_id}/verification", api.admin)

    assert model.status_code == 200
    assert "sha256:" + hashlib.sha256(model.content).hexdigest() == world.release["model_digest"]
    assert manifest == world.release["signed_manifest"]
    assert verdict["ok"] is True


def test_release_only_for_permitted_tenants_until_granted(world: World) -> None:
    api = world.api
    release_id = world.release["id"]
    assert api.call("GET", f"/releases/{release_id}/model", world.b.headers).status_code == 404

    api.ok("POST", f"/releases/{release_id}/grants", api.admin, json={"tenant_id": world.b.id})

    assert api.call("GET", f"/releases/{release_id}/model", world.b.headers).status_code == 200


def test_release_of_an_unfinished_run_conflicts(world: World) -> None:
    api = world.api
    federation = api.federation("unfinished", [n["id"] for n in world.nodes])
    run = api.ok("POST", f"/federations/{federation['id']}/runs", api.admin)
    api.ok("POST", f"/runs/{run['id']}/stop", api.admin)

    response = api.call("POST", f"/runs/{run['id']}/releases", api.admin, json={})

    assert response.status_code == 409
    assert response.json()["code"] == "run_not_finished"


def test_next_release_gets_the_next_version_and_tampering_fails_verification(
    world: World,
) -> None:
    api = world.api
    second = api.ok("POST", f"/runs/{world.run['id']}/releases", api.admin, json={})
    assert second["version"] == 2
    with api.db.read() as session:
        from coordinator.db.tables import Release

        row = session.get(Release, second["id"])
    assert row is not None
    model = Path(row.directory) / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")

    verdict = api.ok("GET", f"/releases/{second['id']}/verification", api.admin)

    assert verdict["ok"] is False
    assert verdict["code"] == "release-digest-mismatch"
    assert json.dumps(verdict)
