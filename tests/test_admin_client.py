"""The demo's admin API client against the real app: typed answers, and every failure named
as one paragraph (call, HTTP status, the API's code and message)."""

from __future__ import annotations

import pytest
from admin_support import AdminApi
from fastapi.testclient import TestClient

from lepton.admin_client import AdminApiError, AdminClient
from lepton_fl.processes import free_port


def _client(api: AdminApi) -> AdminClient:
    http = TestClient(api.app, base_url="http://testserver/api/v1", raise_server_exceptions=False)
    return AdminClient(http)


def test_admin_client_sends_the_key_and_parses_the_answer(api: AdminApi) -> None:
    admin = _client(api).as_key(api.admin["Authorization"].split(" ", 1)[1])

    tenant = admin.create_tenant("cleveland", display_name="Cleveland Clinic")
    key = admin.create_api_key("tenant_admin", tenant_id=tenant.id)
    node = admin.as_key(key).create_node("ward", epsilon_budget=5.0)

    assert tenant.name == "cleveland"
    assert node.enrollment_token


def test_admin_client_anonymous_reads_the_signing_key(api: AdminApi) -> None:
    assert "BEGIN PUBLIC KEY" in _client(api).anonymous().signing_key()


def test_admin_client_refusal_names_call_status_code_and_message(api: AdminApi) -> None:
    with pytest.raises(AdminApiError) as caught:
        _client(api).anonymous().create_tenant("nope")

    err = caught.value
    assert (err.status, err.code) == (401, "unauthenticated")
    assert str(err).startswith(
        "The admin API call POST /tenants failed (HTTP 401, unauthenticated)"
    )


def test_admin_client_unreachable_api_says_where() -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1"  # nothing listens there
    with AdminClient.connect(url, timeout=5) as client, pytest.raises(AdminApiError) as caught:
        client.audit_verification()

    assert caught.value.code == "admin_api_unreachable"
    assert url in str(caught.value)
