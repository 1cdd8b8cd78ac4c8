"""The admin API client against the real app: results and errors with their codes."""

from __future__ import annotations

import pytest
from admin_support import AdminApi
from fastapi.testclient import TestClient

from lepton.admin_client import AdminApiError, AdminClient


def _client(api: AdminApi, key: str | None) -> AdminClient:
    return AdminClient(
        "http://testserver/api/v1", key, http=TestClient(api.app, raise_server_exceptions=False)
    )


def test_client_drives_tenants_keys_and_nodes(api: AdminApi) -> None:
    admin_key = api.admin["Authorization"].split(" ", 1)[1]
    with _client(api, admin_key) as admin:
        tenant = admin.create_tenant("hospital")
        it_key = admin.create_key("tenant_admin", tenant_id=tenant["id"])
    with _client(api, it_key) as it:
        node = it.create_node("ward", epsilon_budget=5.0)

    assert node["state"] == "pending"
    assert node["enrollment_token"].startswith("lft_")


def test_client_errors_carry_the_api_code(api: AdminApi) -> None:
    with _client(api, None) as anonymous, pytest.raises(AdminApiError) as refused:
        anonymous.create_tenant("nope")

    assert refused.value.code == "unauthenticated"
    assert refused.value.status == 401
