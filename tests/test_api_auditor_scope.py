"""Tenant auditors: an auditor key of tenant A reads only A's nodes, ledgers, the runs and
releases A's nodes took part in (other members only as counts) and the audit events about A;
B's are 404 like ids that do not exist, every write is 403, and the platform auditor keeps the
global view. Against the real app, a real SQLite file and a real SuperLink.

One world per module: tenants A and B with three enrolled nodes each; a finished run and a
release of A's nodes only, of B's nodes only, and of a mixed federation (one node of A, two
of B). Every route of the app is covered (`test_every_route_has_a_case`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from admin_support import AdminApi, Tenant, bearer, play_serverapp

from coordinator.db.tables import Run
from coordinator.superlink import SuperLink
from lepton_fl.crypto.release import verify_signed_manifest

PUBLIC = {"/health", "/signing-key", "/nodes/enroll"}
ROOT = {"/metrics"}  # served at the root of the app, not under /api/v1


@dataclass
class World:
    api: AdminApi
    a: Tenant
    b: Tenant
    auditor_a: dict[str, str]  # a tenant auditor of A
    platform_auditor: dict[str, str]
    mine: dict[str, str]  # path parameter -> one of A's objects (or one A may read)
    theirs: dict[str, str]  # path parameter -> B's object of the same kind
    a_nodes: list[dict[str, Any]]
    b_nodes: list[dict[str, Any]]
    runs: dict[str, str]  # "a", "b", "mixed" -> run id
    releases: dict[str, str]
    secrets_b: set[str]  # what no response to A's auditor may contain


def _finished_run(api: AdminApi, name: str, members: list[str]) -> tuple[str, str]:
    federation = api.federation(name, members)
    run = api.ok("POST", f"/federations/{federation['id']}/runs", api.admin)
    play_serverapp(api, run["id"])
    release = api.ok("POST", f"/runs/{run['id']}/releases", api.admin, json={})
    return run["id"], release["id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, superlink: SuperLink) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("auditor-scope")
    with AdminApi.start(root / "coordinator", superlink) as api:
        a, b = api.tenant("tenant-a"), api.tenant("tenant-b")
        a_nodes = [api.enrolled_node(a, f"a-site-{i}") for i in range(3)]
        b_nodes = [api.enrolled_node(b, f"b-site-{i}") for i in range(3)]
        run_a, release_a = _finished_run(api, "fed-a", [n["id"] for n in a_nodes])
        run_b, release_b = _finished_run(api, "fed-b", [n["id"] for n in b_nodes])
        mixed = [a_nodes[0]["id"], b_nodes[0]["id"], b_nodes[1]["id"]]
        run_mixed, release_mixed = _finished_run(api, "fed-mixed", mixed)
        created = api.ok(
            "POST", "/api-keys", api.admin, json={"role": "auditor", "tenant_id": a.id}
        )
        federations = {f["name"]: f["id"] for f in api.ok("GET", "/federations", api.admin)}
        keys = api.ok("GET", "/api-keys", api.admin)
        a_key = next(k["id"] for k in keys if k["tenant_id"] == a.id and k["role"] == "auditor")
        b_keys = [k for k in keys if k["tenant_id"] == b.id]
        mine = {
            "tenant_id": a.id,
            "node_id": a_nodes[0]["id"],
            "federation_id": federations["fed-mixed"],
            "run_id": run_mixed,
            "release_id": release_mixed,
            "key_id": a_key,
        }
        theirs = {
            "tenant_id": b.id,
            "node_id": b_nodes[0]["id"],
            "federation_id": federations["fed-b"],
            "run_id": run_b,
            "release_id": release_b,
            "key_id": b_keys[0]["id"],
        }
        secrets_b = {b.id, run_b, release_b}
        secrets_b |= {n["id"] for n in b_nodes} | {n["name"] for n in b_nodes}
        secrets_b |= {k["id"] for k in b_keys} | {f"key:{k['prefix']}" for k in b_keys}
        yield World(
            api,
            a,
            b,
            bearer(created["key"]),
            api.auditor(),
            mine,
            theirs,
            a_nodes,
            b_nodes,
            {"a": run_a, "b": run_b, "mixed": run_mixed},
            {"a": release_a, "b": release_b, "mixed": release_mixed},
            secrets_b,
        )


def _url(template: str, ids: dict[str, str]) -> str:
    return template.format(**ids)


def _call(
    world: World,
    method: str,
    template: str,
    ids: dict[str, str],
    key: dict[str, str],
    json: Any = None,
) -> httpx.Response:
    """Call a route of the table: under /api/v1, or at the root (`ROOT`, e.g. /metrics)."""
    if template in ROOT:
        return world.api.client.request(method, _url(template, ids), headers=key, json=json)
    return world.api.call(method, _url(template, ids), key, json=json)


def _app_routes(api: AdminApi) -> set[tuple[str, str]]:
    paths = api.app.openapi()["paths"]
    outside = {p for p in paths if not p.startswith("/api/v1/")}
    assert outside <= ROOT, f"routes outside /api/v1 that ROOT does not name: {outside - ROOT}"
    return {
        (method.upper(), path.removeprefix("/api/v1"))
        for path, operations in paths.items()
        if path.removeprefix("/api/v1") not in PUBLIC
        for method in operations
    }


# -- every route ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """A read route: what A's auditor gets for A's object (`own`), whether B's object is
    hidden from it (404), and what the platform auditor gets."""

    own: int = 200
    hides_theirs: bool = True
    platform: int = 200


#: Every read route (GET, and the POSTs that only read), and what a tenant auditor gets.
READS: dict[tuple[str, str], Read] = {
    ("GET", "/me"): Read(hides_theirs=False),
    ("GET", "/tenants"): Read(hides_theirs=False),
    ("GET", "/tenants/{tenant_id}"): Read(),
    ("GET", "/api-keys"): Read(own=403, hides_theirs=False, platform=403),
    ("GET", "/nodes"): Read(hides_theirs=False),
    ("GET", "/nodes/{node_id}"): Read(),
    ("GET", "/federations"): Read(hides_theirs=False),
    # federation definitions are not tenant secrets; their members are filtered
    ("GET", "/federations/{federation_id}"): Read(hides_theirs=False),
    ("GET", "/federations/{federation_id}/members"): Read(hides_theirs=False),
    ("GET", "/runs"): Read(hides_theirs=False),
    ("GET", "/runs/{run_id}"): Read(),
    ("GET", "/runs/{run_id}/rounds"): Read(),
    ("GET", "/ledger"): Read(hides_theirs=False),
    ("GET", "/ledger/nodes/{node_id}"): Read(),
    ("POST", "/ledger/nodes/{node_id}/reconcile"): Read(),  # comparing is a read
    ("GET", "/releases"): Read(hides_theirs=False),
    ("GET", "/releases/{release_id}"): Read(),
    ("GET", "/releases/{release_id}/manifest"): Read(),
    ("GET", "/releases/{release_id}/model"): Read(own=403, platform=403),  # never weights
    ("GET", "/releases/{release_id}/verification"): Read(),
    ("GET", "/audit/events"): Read(hides_theirs=False),
    ("GET", "/audit/verification"): Read(hides_theirs=False),
    ("POST", "/audit/verification"): Read(hides_theirs=False),
    ("GET", "/audit/checkpoints"): Read(hides_theirs=False),
    ("GET", "/audit/checkpoints/latest"): Read(hides_theirs=False),
    ("GET", "/reports/privacy"): Read(hides_theirs=False),  # by query: see test_attack_*
    # only its tenant's series (tests/test_metrics_endpoint.py checks them one by one)
    ("GET", "/metrics"): Read(hides_theirs=False),
}
READ_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/ledger/nodes/{node_id}/reconcile"): {"entries": []},
    ("POST", "/audit/verification"): {"checkpoints": []},
}

#: Every write route, with a body that passes validation: a tenant auditor gets 403.
WRITES: dict[tuple[str, str], Any] = {
    ("POST", "/tenants"): {"name": "auditor-made"},
    ("POST", "/tenants/{tenant_id}/disable"): None,
    ("POST", "/api-keys"): {"role": "auditor"},
    ("POST", "/api-keys/{key_id}/revoke"): None,
    ("POST", "/nodes"): {"name": "auditor-node"},
    ("POST", "/nodes/{node_id}/revoke"): None,
    ("POST", "/federations"): {
        "name": "auditor-fed",
        "task": "breast_cancer",
        "privacy": {"target_epsilon": 1},
    },
    ("PUT", "/federations/{federation_id}/members/{node_id}"): None,
    ("DELETE", "/federations/{federation_id}/members/{node_id}"): None,
    ("POST", "/federations/{federation_id}/runs"): None,
    ("POST", "/runs/{run_id}/stop"): None,
    ("POST", "/runs/{run_id}/releases"): {},
    ("POST", "/releases/{release_id}/grants"): {"tenant_id": "{tenant_id}"},
    ("POST", "/ledger/nodes/{node_id}/reconcile"): {"entries": [], "repair": True},
}


def test_every_route_has_a_case(world: World) -> None:
    """A new route fails here until this file says what a tenant auditor gets from it."""
    covered = set(READS) | set(WRITES)

    missing = _app_routes(world.api) - covered

    assert not missing, f"routes without a tenant-auditor case: {sorted(missing)}"


def _body(body: Any, ids: dict[str, str]) -> Any:
    if isinstance(body, dict):
        return {k: _body(v, ids) for k, v in body.items()}
    return body.format(**ids) if isinstance(body, str) else body


def _assert_no_secrets(world: World, text: str, where: str) -> None:
    leaked = {s for s in world.secrets_b if s in text}
    assert not leaked, f"{where} shows tenant B's {sorted(leaked)}"


@pytest.mark.parametrize(("method", "template"), sorted(READS))
def test_tenant_auditor_reads_its_own_and_nothing_of_another_tenant(
    world: World, method: str, template: str
) -> None:
    case = READS[(method, template)]
    body = READ_BODIES.get((method, template))

    own = _call(world, method, template, world.mine, world.auditor_a, json=body)

    assert own.status_code == case.own, own.text
    _assert_no_secrets(world, own.text, f"{method} {template}")


@pytest.mark.parametrize(
    ("method", "template"), sorted(k for k, v in READS.items() if v.hides_theirs)
)
def test_another_tenants_object_is_not_found_like_a_missing_one(
    world: World, method: str, template: str
) -> None:
    body = READ_BODIES.get((method, template))
    missing = {k: str(uuid.uuid4()) for k in world.mine}

    theirs = _call(world, method, template, world.theirs, world.auditor_a, json=body)
    absent = _call(world, method, template, missing, world.auditor_a, json=body)

    assert theirs.status_code == 404, theirs.text
    assert absent.status_code == 404, absent.text
    assert set(theirs.json()) == set(absent.json())
    assert theirs.json()["code"] == absent.json()["code"]


@pytest.mark.parametrize(("method", "template"), sorted(READS))
def test_the_platform_auditor_still_reads_everything(
    world: World, method: str, template: str
) -> None:
    case = READS[(method, template)]
    body = READ_BODIES.get((method, template))

    for ids in (world.mine, world.theirs):
        response = _call(world, method, template, ids, world.platform_auditor, json=body)
        assert response.status_code == case.platform, (ids, response.text)


@pytest.mark.parametrize(("method", "template"), sorted(WRITES))
def test_tenant_auditor_writes_are_forbidden(world: World, method: str, template: str) -> None:
    for ids in (world.mine, world.theirs):
        body = _body(WRITES[(method, template)], ids)
        response = _call(world, method, template, ids, world.auditor_a, json=body)

        assert response.status_code == 403, response.text
        assert response.json()["code"] == "read_only_role"


# -- the attack: A's auditor asks for B's objects by id and by listing -----------------------


def test_attack_by_id_is_not_found(world: World) -> None:
    api, key, b_node = world.api, world.auditor_a, world.b_nodes[0]["id"]

    for path in (
        f"/ledger/nodes/{b_node}",
        f"/nodes/{b_node}",
        f"/runs/{world.runs['b']}",
        f"/runs/{world.runs['b']}/rounds",
        f"/releases/{world.releases['b']}",
        f"/releases/{world.releases['b']}/manifest",
        f"/releases/{world.releases['b']}/verification",
        f"/tenants/{world.b.id}",
    ):
        assert api.call("GET", path, key).status_code == 404, path
    reconcile = api.call("POST", f"/ledger/nodes/{b_node}/reconcile", key, json={"entries": []})
    assert reconcile.status_code == 404
    for query in (
        {"tenant_id": world.b.id},
        {"federation_id": world.theirs["federation_id"]},
        {"release_id": world.releases["b"]},
    ):
        report = api.call("GET", "/reports/privacy", key, params=query)
        assert report.status_code == 404, (query, report.text)


def test_reports_of_shared_objects_show_other_tenants_only_as_counts(world: World) -> None:
    api, key = world.api, world.auditor_a

    for query in (
        {"federation_id": world.mine["federation_id"]},
        {"release_id": world.releases["mixed"]},
        {"tenant_id": world.a.id},
    ):
        report = api.call("GET", "/reports/privacy", key, params=query)
        assert report.status_code == 200, (query, report.text)
        _assert_no_secrets(world, report.text, f"the report {query}")


def test_attack_by_listing_shows_nothing_of_another_tenant(world: World) -> None:
    api, key = world.api, world.auditor_a
    a_ids = {n["id"] for n in world.a_nodes}

    nodes = api.ok("GET", "/nodes", key, params={"tenant_id": world.b.id})  # filter ignored
    ledger = api.ok("GET", "/ledger", key)
    runs = api.ok("GET", "/runs", key, params={"federation_id": world.theirs["federation_id"]})
    releases = api.ok("GET", "/releases", key)
    tenants = api.ok("GET", "/tenants", key)
    fed_b_members = api.ok("GET", f"/federations/{world.theirs['federation_id']}/members", key)

    assert {n["id"] for n in nodes} == a_ids
    assert {r["node_id"] for r in ledger} == a_ids
    assert runs == []
    assert {r["id"] for r in releases} == {world.releases["a"], world.releases["mixed"]}
    assert [t["id"] for t in tenants] == [world.a.id]
    assert fed_b_members == []


def test_attack_on_the_audit_log_shows_only_events_about_the_tenant(world: World) -> None:
    api = world.api
    everything = api.ok("GET", "/audit/events", world.platform_auditor, params={"limit": 1000})

    events = api.ok("GET", "/audit/events", world.auditor_a, params={"limit": 1000})
    created = api.ok("GET", "/audit/events", world.auditor_a, params={"action": "tenant.create"})

    assert any(s in json.dumps(everything) for s in world.secrets_b)  # the check can fail
    _assert_no_secrets(world, json.dumps(events), "the audit log")
    assert created == [e for e in events if e["action"] == "tenant.create"]
    assert [e["target"] for e in created] == [f"tenant:{world.a.id}"]
    targets = {e["target"] for e in events}
    assert f"node:{world.a_nodes[0]['id']}" in targets
    assert {f"run:{r}" for r in (world.runs["a"], world.runs["mixed"])} <= targets
    assert f"release:{world.releases['mixed']}" in targets
    assert len(events) < len(everything)
    start = next(
        e
        for e in events
        if e["action"] == "run.start" and e["target"] == f"run:{world.runs['mixed']}"
    )
    assert start["details"]["members"] == [world.a_nodes[0]["id"]]
    assert start["details"]["other_members"] == 2
    assert start["details"]["redacted"] is True


def test_audit_events_page_like_the_whole_list(world: World) -> None:
    api, key = world.api, world.auditor_a
    whole = api.ok("GET", "/audit/events", key, params={"limit": 1000})

    pages: list[dict[str, Any]] = []
    while True:
        after = pages[-1]["seq"] if pages else 0
        page = api.ok("GET", "/audit/events", key, params={"after": after, "limit": 3})
        if not page:
            break
        assert len(page) <= 3
        pages += page

    assert pages == whole


# -- other members only as counts ------------------------------------------------------------


def test_mixed_run_shows_other_tenants_members_only_as_counts(world: World) -> None:
    api, run_id, a0 = world.api, world.runs["mixed"], world.a_nodes[0]["id"]

    for key in (world.auditor_a, world.a.headers):
        run = api.ok("GET", f"/runs/{run_id}", key)
        rounds = api.ok("GET", f"/runs/{run_id}/rounds", key)

        assert [m["node_id"] for m in run["members"]] == [a0]
        assert run["other_members"] == 2
        assert all(r["participants"] == [a0] for r in rounds)
        assert all(r["other_participants"] == 2 for r in rounds)
    full = api.ok("GET", f"/runs/{run_id}", world.platform_auditor)
    assert len(full["members"]) == 3
    assert full["other_members"] == 0


def test_tenant_auditor_reads_a_release_manifest_with_other_participants_counted(
    world: World,
) -> None:
    api, release_id, a0 = world.api, world.releases["mixed"], world.a_nodes[0]["id"]

    release = api.ok("GET", f"/releases/{release_id}", world.auditor_a)
    manifest = api.ok("GET", f"/releases/{release_id}/manifest", world.auditor_a)
    verdict = api.ok("GET", f"/releases/{release_id}/verification", world.auditor_a)

    assert manifest == release["signed_manifest"]
    assert "signature" not in manifest
    assert "verification" in manifest["redacted"]
    body = manifest["manifest"]
    assert [p["node_id"] for p in body["participants"]] == [a0]
    assert body["other_participants"] == 2
    assert set(body["epsilon_spent"]) == {a0}
    assert all(
        r["node_ids"] == [a0] and r["other_participants"] == 2 for r in body["round_participants"]
    )
    assert verdict["ok"] is True  # the signed original, checked by the coordinator


def test_tenant_admin_and_platform_auditor_keep_the_signed_manifest(world: World) -> None:
    api, release_id = world.api, world.releases["mixed"]
    key = api.ok("GET", "/signing-key", {})["public_key_pem"]

    for reader in (world.a.headers, world.platform_auditor):
        signed = api.ok("GET", f"/releases/{release_id}/manifest", reader)
        manifest = verify_signed_manifest(signed, key)
        assert len(manifest["participants"]) == 3


def test_federation_members_are_only_the_tenants_own(world: World) -> None:
    members = world.api.ok(
        "GET", f"/federations/{world.mine['federation_id']}/members", world.auditor_a
    )

    assert [m["node_id"] for m in members] == [world.a_nodes[0]["id"]]


# -- the keys --------------------------------------------------------------------------------


def test_me_names_the_tenant(world: World) -> None:
    me = world.api.ok("GET", "/me", world.auditor_a)

    assert me["role"] == "auditor"
    assert me["tenant_id"] == world.a.id


def test_a_tenant_admin_creates_auditor_keys_for_its_own_tenant_only(world: World) -> None:
    api = world.api

    own = api.ok("POST", "/api-keys", world.a.headers, json={"role": "auditor"})
    other = api.call(
        "POST", "/api-keys", world.a.headers, json={"role": "auditor", "tenant_id": world.b.id}
    )
    platform = api.call("POST", "/api-keys", world.a.headers, json={"role": "platform_admin"})

    assert own["tenant_id"] == world.a.id  # never a platform auditor
    assert api.ok("GET", "/me", bearer(own["key"]))["tenant_id"] == world.a.id
    assert other.status_code == 404
    assert platform.status_code == 403
    assert own["id"] in {k["id"] for k in api.ok("GET", "/api-keys", world.a.headers)}
    assert api.call("POST", f"/api-keys/{own['id']}/revoke", world.b.headers).status_code == 404
    api.ok("POST", f"/api-keys/{own['id']}/revoke", world.a.headers)
    assert api.call("GET", "/me", bearer(own["key"])).status_code == 401


def test_platform_admin_key_rules(world: World) -> None:
    api = world.api

    missing = api.call(
        "POST", "/api-keys", api.admin, json={"role": "auditor", "tenant_id": str(uuid.uuid4())}
    )
    platform = api.call(
        "POST", "/api-keys", api.admin, json={"role": "platform_admin", "tenant_id": world.a.id}
    )

    assert missing.status_code == 404
    assert platform.status_code == 422
    assert platform.json()["code"] == "tenant_not_allowed"


def test_a_disabled_tenants_auditor_key_stops_working(world: World) -> None:
    api = world.api
    tenant = api.tenant("tenant-c")
    key = api.ok("POST", "/api-keys", api.admin, json={"role": "auditor", "tenant_id": tenant.id})
    assert api.call("GET", "/nodes", bearer(key["key"])).status_code == 200

    api.ok("POST", f"/tenants/{tenant.id}/disable", api.admin)

    refused = api.call("GET", "/nodes", bearer(key["key"]))
    assert refused.status_code == 401
    assert refused.json()["code"] == "tenant_disabled"


def test_a_failure_message_names_no_other_tenants_member(world: World) -> None:
    """Free text too: a run's failure that names another tenant's node (by name, id or
    Flower node id) reaches a tenant-scoped reader with "another member" in its place."""
    api, run_id = world.api, world.runs["mixed"]
    b0 = world.b_nodes[0]
    failure = (
        f"Round 2 failed: {b0['name']} (Flower node {b0['flower_node_id']}, {b0['id']}) "
        f"timed out; {world.a_nodes[0]['name']} answered."
    )
    with api.db.write() as session:
        run = session.get(Run, run_id)
        assert run is not None
        original, run.failure = run.failure, failure
        session.add(run)
    try:
        for key in (world.auditor_a, world.a.headers):
            seen = api.ok("GET", f"/runs/{run_id}", key)["failure"]
            assert seen == (
                "Round 2 failed: another member (Flower node another member, another member) "
                f"timed out; {world.a_nodes[0]['name']} answered."
            )
            report = api.ok("GET", "/reports/privacy", key, params={"tenant_id": world.a.id})
            reported = [
                r["failure"] for f in report["report"]["federations"] for r in f["runs"]
                if r["id"] == run_id
            ]  # fmt: skip
            assert reported == [seen]
        assert api.ok("GET", f"/runs/{run_id}", world.platform_auditor)["failure"] == failure
    finally:
        with api.db.write() as session:
            run = session.get(Run, run_id)
            assert run is not None
            run.failure = original
            session.add(run)
