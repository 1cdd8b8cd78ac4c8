"""Tenants and API keys through the API."""

from __future__ import annotations

from admin_support import AdminApi, bearer


def test_tenant_lifecycle(api: AdminApi) -> None:
    created = api.ok("POST", "/tenants", api.admin, json={"name": "bank-1", "display_name": "B"})

    assert api.ok("GET", f"/tenants/{created['id']}", api.admin)["name"] == "bank-1"
    assert [t["name"] for t in api.ok("GET", "/tenants", api.admin)] == ["bank-1"]
    disabled = api.ok("POST", f"/tenants/{created['id']}/disable", api.admin)
    assert disabled["disabled"] is True
    assert disabled["disabled_at"]


def test_disabled_tenant_keys_stop_working(api: AdminApi) -> None:
    tenant = api.tenant("bank-2")
    assert api.call("GET", "/nodes", tenant.headers).status_code == 200

    api.ok("POST", f"/tenants/{tenant.id}/disable", api.admin)

    response = api.call("GET", "/nodes", tenant.headers)
    assert response.status_code == 401
    assert response.json()["code"] == "tenant_disabled"


def test_key_is_shown_once_listed_by_prefix_and_revocable(api: AdminApi) -> None:
    created = api.ok("POST", "/api-keys", api.admin, json={"role": "auditor", "name": "audit"})
    key = created.pop("key")
    assert key.startswith(f"lfk_{created['prefix']}_")

    listed = api.ok("GET", "/api-keys", api.admin)
    assert created["prefix"] in {k["prefix"] for k in listed}
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert api.ok("GET", "/me", bearer(key))["role"] == "auditor"

    api.ok("POST", f"/api-keys/{created['id']}/revoke", api.admin)

    response = api.call("GET", "/me", bearer(key))
    assert response.status_code == 401
    assert response.json()["code"] == "revoked_api_key"


def test_tenant_admin_creates_only_its_own_tenant_keys(api: AdminApi) -> None:
    tenant = api.tenant("bank-3")

    own = api.call("POST", "/api-keys", tenant.headers, json={"role": "tenant_admin"})
    platform = api.call("POST", "/api-keys", tenant.headers, json={"role": "platform_admin"})

    assert own.status_code == 201
    assert own.json()["tenant_id"] == tenant.id
    assert platform.status_code == 403


def test_tenant_admin_key_needs_a_tenant(api: AdminApi) -> None:
    response = api.call("POST", "/api-keys", api.admin, json={"role": "tenant_admin"})

    assert response.status_code == 422
    assert response.json()["code"] == "tenant_required"


def test_duplicate_tenant_is_409(api: AdminApi) -> None:
    api.tenant("bank-4")

    response = api.call("POST", "/tenants", api.admin, json={"name": "bank-4"})

    assert response.status_code == 409
