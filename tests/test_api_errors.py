"""Every error is JSON with a code and a message; nothing malformed gets a 500."""

from __future__ import annotations

import pytest
from admin_support import AdminApi


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b'{"name": "x"}', "text/plain"),
        (b"[1, 2, 3]", "application/json"),
        (b'{"name": NaN}', "application/json"),
        (b'{"name": "a", "display_name": "' + b"x" * 5000 + b'"}', "application/json"),
        (b"", "application/json"),
    ],
)
def test_malformed_bodies_get_a_json_4xx(api: AdminApi, content: bytes, content_type: str) -> None:
    response = api.call(
        "POST", "/tenants", api.admin | {"Content-Type": content_type}, content=content
    )

    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) >= {"code", "message"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "n", "epsilon_budget": 1e400}',
        b'{"name": "n", "epsilon_budget": Infinity}',
        b'{"name": "n", "token_ttl_hours": 10000000000000000000000000000000000000000}',
        b'{"name": "n\\u0000x"}',
        b'{"name": ["n"]}',
    ],
)
def test_out_of_range_values_are_422(api: AdminApi, body: bytes) -> None:
    tenant = api.tenant("t")
    headers = tenant.headers | {"Content-Type": "application/json"}
    response = api.call("POST", "/nodes", headers, content=body)

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


def test_huge_query_integers_are_422(api: AdminApi) -> None:
    response = api.call("GET", "/audit/events", api.admin, params={"after": 10**40})

    assert response.status_code == 422
    assert response.json()["field"] == "query parameter after"


def test_wrong_method_is_json_405(api: AdminApi) -> None:
    response = api.call("DELETE", "/tenants", api.admin)

    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_unknown_route_is_json_404(api: AdminApi) -> None:
    response = api.call("GET", "/nothing-here", api.admin)

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_openapi_and_docs_are_served(api: AdminApi) -> None:
    spec = api.client.get("/openapi.json").json()

    assert "/api/v1/tenants" in spec["paths"]
    assert api.client.get("/docs").status_code == 200
