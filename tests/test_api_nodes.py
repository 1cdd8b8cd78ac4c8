"""Nodes through the API: create, enroll with a real SuperLink, revoke, isolation."""

from __future__ import annotations

from admin_support import AdminApi, new_public_key, registered_node_ids

from coordinator.superlink import SuperLink


def test_node_enrolls_with_its_token_and_key_is_registered(
    api: AdminApi, superlink: SuperLink
) -> None:
    tenant = api.tenant("hospital-a")
    created = api.node(tenant, "cleveland")
    assert created["state"] == "pending"
    assert created["enrollment_token"].startswith("lft_")

    enrolled = api.ok(
        "POST",
        "/nodes/enroll",
        {},
        json={
            "token": created["enrollment_token"],
            "public_key": new_public_key(api.keys_dir, "cleveland"),
        },
    )

    assert enrolled["state"] == "enrolled"
    assert int(enrolled["flower_node_id"]) in registered_node_ids(superlink)
    signing_key = api.ok("GET", "/signing-key", {})  # the key the node pins for runs
    assert enrolled["coordinator_public_key_pem"] == signing_key["public_key_pem"]
    assert enrolled["coordinator_key_fingerprint"] == signing_key["fingerprint"]
    listed = api.ok("GET", "/nodes", tenant.headers)
    assert [n["name"] for n in listed] == ["cleveland"]
    assert "enrollment_token" not in listed[0]


def test_enrollment_token_works_once(api: AdminApi) -> None:
    tenant = api.tenant("hospital-a")
    created = api.node(tenant, "once")
    body = {
        "token": created["enrollment_token"],
        "public_key": new_public_key(api.keys_dir, "once"),
    }
    api.ok("POST", "/nodes/enroll", {}, json=body)

    again = api.call("POST", "/nodes/enroll", {}, json=body)

    assert again.status_code == 401
    assert again.json()["code"] == "invalid_enrollment_token"


def test_enrollment_refuses_a_key_that_is_not_an_openssh_ec_key(api: AdminApi) -> None:
    created = api.node(api.tenant("hospital-a"), "badkey")

    response = api.call(
        "POST",
        "/nodes/enroll",
        {},
        json={"token": created["enrollment_token"], "public_key": "ssh-rsa AAAAB3Nza nope"},
    )

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_public_key"
    assert "NIST curve" in response.json()["message"]


def test_revoked_node_is_unregistered_from_the_superlink(
    api: AdminApi, superlink: SuperLink
) -> None:
    tenant = api.tenant("hospital-a")
    node = api.enrolled_node(tenant, "revokee")
    assert int(node["flower_node_id"]) in registered_node_ids(superlink)

    revoked = api.ok("POST", f"/nodes/{node['id']}/revoke", tenant.headers)

    assert revoked["state"] == "revoked"
    assert int(node["flower_node_id"]) not in registered_node_ids(superlink)


def test_duplicate_node_name_is_a_conflict(api: AdminApi) -> None:
    tenant = api.tenant("hospital-a")
    api.node(tenant, "twin")

    response = api.call("POST", "/nodes", tenant.headers, json={"name": "twin"})

    assert response.status_code == 409
    assert response.json()["code"] == "duplicate_name"


def test_platform_admin_must_name_the_tenant(api: AdminApi) -> None:
    response = api.call("POST", "/nodes", api.admin, json={"name": "orphan"})

    assert response.status_code == 422
    assert response.json()["code"] == "tenant_required"


def test_tenant_admin_sees_only_its_own_nodes(api: AdminApi) -> None:
    a, b = api.tenant("hospital-a"), api.tenant("hospital-b")
    node_a = api.node(a, "node-a")
    api.node(b, "node-b")

    assert [n["name"] for n in api.ok("GET", "/nodes", b.headers)] == ["node-b"]
    assert api.call("GET", f"/nodes/{node_a['id']}", b.headers).status_code == 404
    assert api.call("POST", f"/nodes/{node_a['id']}/revoke", b.headers).status_code == 404
    assert len(api.ok("GET", "/nodes", api.admin)) == 2
