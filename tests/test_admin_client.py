"""The demo's admin API client: typed answers, and every failure named as one paragraph."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import httpx
import pytest

from lepton import cli
from lepton.admin_client import AdminApiError, AdminClient

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, key: str | None = "lfk_abc_secret") -> AdminClient:
    http = httpx.Client(base_url="http://api.test/api/v1", transport=httpx.MockTransport(handler))
    return AdminClient(http, key)


def test_admin_client_sends_the_key_and_parses_the_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            201,
            json={"id": "t1", "name": "cleveland", "display_name": "", "disabled": False},
        )

    tenant = _client(handler).create_tenant("cleveland")

    assert (tenant.id, tenant.name) == ("t1", "cleveland")
    assert seen[0].headers["Authorization"] == "Bearer lfk_abc_secret"
    assert json.loads(seen[0].content) == {"name": "cleveland", "display_name": ""}


def test_admin_client_anonymous_sends_no_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"public_key_pem": "PEM", "algorithm": "ed25519"})

    assert _client(handler).anonymous().signing_key() == "PEM"
    assert "Authorization" not in seen[0].headers


def test_admin_client_refusal_names_call_status_code_and_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {
            "code": "budget_exceeded",
            "message": "Node stingy cannot take part.",
            "field": None,
        }
        return httpx.Response(409, json=body)

    with pytest.raises(AdminApiError) as caught:
        _client(handler).start_run("f1")

    err = caught.value
    assert (err.status, err.code) == (409, "budget_exceeded")
    assert str(err) == (
        "The admin API call POST /federations/f1/runs failed (HTTP 409, budget_exceeded): "
        "Node stingy cannot take part."
    )


def test_admin_client_non_json_error_is_still_named() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad Gateway")

    with pytest.raises(AdminApiError, match=r"GET /runs/r1 failed \(HTTP 502, admin_api_error\)"):
        _client(handler).run("r1")


def test_admin_client_unreachable_api_says_where() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(AdminApiError) as caught:
        _client(handler).audit_verification()

    assert caught.value.code == "admin_api_unreachable"
    assert "http://api.test/api/v1" in str(caught.value)


def test_demo_api_failure_exits_2_with_one_paragraph(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(_opts: object) -> None:
        raise AdminApiError("POST /federations", "name: taken.", status=409, code="duplicate_name")

    monkeypatch.setattr("lepton.demo.run_demo", refused)
    monkeypatch.setattr(sys, "argv", ["lepton", "demo"])

    with pytest.raises(SystemExit) as done:
        cli.main()

    err = capsys.readouterr().err
    assert done.value.code == 2
    assert err == (
        "error [duplicate_name]: The admin API call POST /federations failed "
        "(HTTP 409, duplicate_name): name: taken.\n"
    )
