"""Who may do what, route by route: tenant isolation (404), auditors' writes (403), and
unauthenticated requests (401), against the real app, a real SQLite file and a real
SuperLink. One world is built per module: tenant A with three enrolled nodes, a federation,
a finished run with its ledger, and a release; tenant B and an auditor look at it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from admin_support import AdminApi, Tenant, play_serverapp

from coordinator.superlink import SuperLink


@dataclass
class World:
    api: AdminApi
    a: Tenant
    b: Tenant
    auditor: dict[str, str]
    ids: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, superlink: SuperLink) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("isolation")
    with AdminApi.start(root / "coordinator", superlink) as api:
        a, b = api.tenant("tenant-a"), api.tenant("tenant-b")
        nodes = [api.enrolled_node(a, f"a-site-{i}") for i in range(3)]
        pending = api.node(a, "a-pending")
        federation = api.federation("fed-a", [n["id"] for n in nodes])
        run = api.ok("POST", f"/federations/{federation['id']}/runs", api.admin)
        play_serverapp(api, run["id"])
        release = api.ok("POST", f"/runs/{run['id']}/releases", api.admin, json={})
        a_key = next(k for k in api.ok("GET", "/api-keys", a.headers))
        ids = {
            "tenant": a.id,
            "node": nodes[0]["id"],
            "pending_node": pending["id"],
            "federation": federation["id"],
            "run": run["id"],
            "release": release["id"],
            "key": a_key["id"],
        }
        yield World(api, a, b, api.auditor(), ids)


RECONCILE = {"entries": []}

# (method, path, body): every route that names one of tenant A's resources.
TENANT_SCOPED = [
    ("GET", "/tenants/{tenant}", None),
    ("GET", "/nodes/{node}", None),
    ("POST", "/nodes/{node}/revoke", None),
    ("GET", "/ledger/nodes/{node}", None),
    ("POST", "/ledger/nodes/{node}/reconcile", RECONCILE),
    ("PUT", "/federations/{federation}/members/{node}", None),
    ("DELETE", "/federations/{federation}/members/{node}", None),
    ("GET", "/runs/{run}", None),
    ("GET", "/runs/{run}/rounds", None),
    ("GET", "/releases/{release}", None),
    ("GET", "/releases/{release}/manifest", None),
    ("GET", "/releases/{release}/model", None),
    ("GET", "/releases/{release}/verification", None),
    ("POST", "/api-keys/{key}/revoke", None),
]


def _path(template: str, ids: dict[str, str]) -> str:
    return template.format(**ids)


@pytest.mark.parametrize(("method", "template", "body"), TENANT_SCOPED)
def test_another_tenants_resource_is_not_found_like_a_missing_one(
    world: World, method: str, template: str, body: Any
) -> None:
    api = world.api
    missing = {k: str(uuid.uuid4()) for k in world.ids} | {"federation": world.ids["federation"]}

    theirs = api.call(method, _path(template, world.ids), world.b.headers, json=body)
    absent = api.call(method, _path(template, missing), world.b.headers, json=body)

    assert theirs.status_code == 404, theirs.text
    assert absent.status_code == 404, absent.text
    assert set(theirs.json()) >= {"code", "message"}
    assert theirs.json()["code"] == absent.json()["code"]


@pytest.mark.parametrize(
    ("method", "template", "body"),
    [t for t in TENANT_SCOPED if t[0] == "GET"],
)
def test_the_owning_tenant_reads_its_resource(
    world: World, method: str, template: str, body: Any
) -> None:
    response = world.api.call(method, _path(template, world.ids), world.a.headers)

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/nodes", "name"),
        ("/runs", "id"),
        ("/releases", "id"),
        ("/ledger", "node_id"),
        ("/api-keys", "id"),
        ("/tenants", "id"),
        ("/federations/{federation}/members", "node_id"),
    ],
)
def test_lists_show_another_tenant_nothing(world: World, path: str, field: str) -> None:
    listed = world.api.ok("GET", _path(path, world.ids), world.b.headers)

    values = {item[field] for item in listed}
    assert not values & set(world.ids.values())


AUDITOR_WRITES = [
    ("POST", "/tenants", {"name": "auditor-made"}),
    ("POST", "/tenants/{tenant}/disable", None),
    ("POST", "/api-keys", {"role": "auditor"}),
    ("POST", "/api-keys/{key}/revoke", None),
    ("POST", "/nodes", {"name": "auditor-node", "tenant_id": "{tenant}"}),
    ("POST", "/nodes/{pending_node}/revoke", None),
    (
        "POST",
        "/federations",
        {"name": "auditor-fed", "task": "breast_cancer", "privacy": {"target_epsilon": 1}},
    ),
    ("PUT", "/federations/{federation}/members/{pending_node}", None),
    ("DELETE", "/federations/{federation}/members/{node}", None),
    ("POST", "/federations/{federation}/runs", None),
    ("POST", "/runs/{run}/stop", None),
    ("POST", "/runs/{run}/releases", {}),
    ("POST", "/releases/{release}/grants", {"tenant_id": "{tenant}"}),
]


def _body(body: Any, ids: dict[str, str]) -> Any:
    if isinstance(body, dict):
        return {k: _body(v, ids) for k, v in body.items()}
    if isinstance(body, str):
        return body.format(**ids)
    return body


@pytest.mark.parametrize(("method", "template", "body"), AUDITOR_WRITES)
def test_auditor_writes_are_forbidden(world: World, method: str, template: str, body: Any) -> None:
    response = world.api.call(
        method, _path(template, world.ids), world.auditor, json=_body(body, world.ids)
    )

    assert response.status_code == 403, response.text
    assert response.json()["code"] == "read_only_role"


@pytest.mark.parametrize(
    "path",
    ["/tenants", "/nodes", "/runs", "/ledger", "/releases", "/audit/events", "/federations"],
)
def test_auditor_reads(world: World, path: str) -> None:
    assert world.api.call("GET", path, world.auditor).status_code == 200


def test_auditor_may_not_download_model_weights(world: World) -> None:
    response = world.api.call("GET", _path("/releases/{release}/model", world.ids), world.auditor)

    assert response.status_code == 403


@pytest.mark.parametrize(
    ("method", "template", "body"),
    [
        ("POST", "/tenants", {"name": "tenant-made"}),
        ("POST", "/federations/{federation}/runs", None),
        ("POST", "/runs/{run}/releases", {}),
        ("GET", "/audit/events", None),
        ("POST", "/api-keys", {"role": "platform_admin"}),
    ],
)
def test_tenant_admin_cannot_act_as_platform_admin(
    world: World, method: str, template: str, body: Any
) -> None:
    response = world.api.call(
        method, _path(template, world.ids), world.a.headers, json=_body(body, world.ids)
    )

    assert response.status_code == 403, response.text


PUBLIC = {"/api/v1/health", "/api/v1/signing-key", "/api/v1/nodes/enroll"}


def _api_routes(api: AdminApi) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, operations in api.app.openapi()["paths"].items()
        if path not in PUBLIC
        for method in operations
    ]


def test_every_route_needs_an_api_key(world: World) -> None:
    routes = _api_routes(world.api)
    assert len(routes) > 25
    assert ("GET", "/metrics") in routes  # served at the root, with a key like the rest
    client = world.api.client
    for method, path in routes:
        url = path
        for segment in ("{tenant_id}", "{node_id}", "{federation_id}", "{run_id}"):
            url = url.replace(segment, str(uuid.uuid4()))
        for segment in ("{release_id}", "{key_id}"):
            url = url.replace(segment, str(uuid.uuid4()))

        bare = client.request(method, url, json={})
        wrong = client.request(
            method, url, headers={"Authorization": "Bearer lfk_nothere_x"}, json={}
        )

        assert bare.status_code == 401, (method, path, bare.text)
        assert bare.json()["code"] == "unauthenticated"
        assert wrong.status_code == 401, (method, path, wrong.text)
        assert wrong.json()["code"] == "invalid_api_key"
