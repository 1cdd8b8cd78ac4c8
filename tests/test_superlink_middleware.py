"""The SuperLink's middlewares run only for the requests they act on, what that relies on in
Flower 1.42, and that no request reaches an endpoint past a middleware that applies to it."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from flwr.supercore.protobuf.translation import ProtobufTranslationMiddleware
from flwr.superlink import main as superlink_main
from flwr.superlink.routers.control import middlewares as control_middlewares
from flwr.superlink.routers.fleet import middlewares as fleet_middlewares
from flwr.superlink.routers.fleet.node_auth import NodeAuthMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from coordinator import superlink_launcher
from coordinator.superlink_middleware import (
    SCOPED,
    predicates,
    scope_middlewares,
    scoped,
)
from lepton_fl.flower_pins import FlowerVersionError


@pytest.fixture
def flower_main() -> Iterator[ModuleType]:
    """`flwr.superlink.main`, scoped for the test and restored after it."""
    saved = {name: getattr(superlink_main, name) for name in SCOPED}
    scope_middlewares(superlink_main, control_middlewares)
    yield superlink_main
    for name, value in saved.items():
        setattr(superlink_main, name, value)


def test_flowers_app_keeps_every_layer_in_its_order_with_five_of_them_scoped(
    flower_main: ModuleType,
) -> None:
    layers = [m.cls for m in flower_main._get_middleware()]
    originals: dict[str, type] = {
        name: getattr(control_middlewares, name) for name in SCOPED if name.startswith("Control")
    }
    originals["FleetEventLogMiddleware"] = fleet_middlewares.FleetEventLogMiddleware
    assert [c.__name__ for c in layers] == [
        "ControlSensitiveResponseMiddleware",
        "BaseHTTPMiddleware",  # Flower's error translator: every request
        "ControlAuthenticationMiddleware",
        "ControlLicenseMiddleware",
        "ProtobufTranslationMiddleware",  # every request
        "ControlEventLogMiddleware",
        "NodeAuthMiddleware",  # every request (it authenticates Fleet calls)
        "FleetEventLogMiddleware",
    ]
    for cls in layers:
        if cls.__name__ in originals:
            assert cls is not originals[cls.__name__]
            assert issubclass(cls, originals[cls.__name__])  # Flower's dispatch, unchanged
            assert cls.dispatch is originals[cls.__name__].dispatch
        else:
            assert not getattr(cls, "__lepton_scoped__", False)
    assert NodeAuthMiddleware in layers
    assert ProtobufTranslationMiddleware in layers
    before = [m.cls for m in flower_main._get_middleware()]
    scope_middlewares(flower_main, control_middlewares)  # idempotent
    assert [m.cls for m in flower_main._get_middleware()] == before


def test_the_launcher_scopes_the_middlewares_before_flowers_app_is_built() -> None:
    source = inspect.getsource(superlink_launcher.install)
    assert "scope_middlewares(superlink_app, control_middlewares)" in source
    # create_app reads the classes by name when it runs, not at import
    assert "Middleware(ControlLicenseMiddleware)" in inspect.getsource(
        superlink_main._get_middleware
    )
    assert "middleware=_get_middleware()" in inspect.getsource(superlink_main.create_app)


def test_the_middlewares_first_conditions_are_the_ones_we_test() -> None:
    """Each scoped middleware's dispatch passes a request on at once under exactly the
    condition we test before it; a Flower that changes one fails here."""
    sources = {name: inspect.getsource(getattr(superlink_main, name).dispatch) for name in SCOPED}
    assert (
        "if _is_control_sensitive_route(request):" in sources["ControlSensitiveResponseMiddleware"]
    )
    assert (
        "if not _is_control_path(request.url.path) or _is_control_auth_route("
        in sources["ControlAuthenticationMiddleware"]
    )
    assert (
        "if self._license_plugin is None or not _is_control_path(request.url.path):"
        in (sources["ControlLicenseMiddleware"])
    )
    assert (
        "if not _is_control_path(request.url.path) or _is_control_sensitive_route("
        in (sources["ControlEventLogMiddleware"])
    )
    fleet = sources["FleetEventLogMiddleware"]
    assert 'if not request.url.path.startswith("/v1/fleet/"):' in fleet
    assert "if plugin is None or not isinstance(protobuf_request, Message):" in fleet
    assert '"fleet_event_log_plugin", None' in fleet
    assert control_middlewares._is_control_path("/v1/control/start-run")
    assert not control_middlewares._is_control_path("/v1/fleet/pull-messages")
    for key in control_middlewares.CONTROL_SENSITIVE_ROUTE_KEYS:
        assert control_middlewares._is_control_path(key[1])  # a sensitive route is Control's


def test_a_flower_without_the_predicates_or_classes_is_refused() -> None:
    with pytest.raises(FlowerVersionError, match="_is_control_path"):
        predicates(ModuleType("no_predicates"))
    with pytest.raises(FlowerVersionError, match="ControlSensitiveResponseMiddleware"):
        scope_middlewares(ModuleType("no_middlewares"), control_middlewares)


# -- behaviour, on a Starlette app ------------------------------------------------------------


class Recorder(BaseHTTPMiddleware):
    """Records every request its dispatch sees, and marks the response."""

    seen: list[str]

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        type(self).seen.append(request.url.path)
        response = await call_next(request)
        response.headers["x-recorded"] = "yes"
        return response


def _app(applies: Any) -> tuple[TestClient, list[str]]:
    seen: list[str] = []
    recorder = type("ControlRecorder", (Recorder,), {"seen": seen})

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{request.url.path} {(await request.body()).decode()}")

    app = Starlette(
        routes=[
            Route("/v1/control/{rest:path}", endpoint, methods=["GET", "POST"]),
            Route("/v1/fleet/{rest:path}", endpoint, methods=["GET", "POST"]),
            Route("/v1/runtime/{rest:path}", endpoint, methods=["GET", "POST"]),
        ],
        middleware=[Middleware(scoped(recorder, applies))],
    )
    return TestClient(app), seen


def _on_control(request: Request) -> bool:
    return bool(control_middlewares._is_control_path(request.url.path))


def test_a_request_it_does_not_apply_to_skips_the_middleware_with_the_same_answer() -> None:
    client, seen = _app(_on_control)
    fleet = client.post("/v1/fleet/pull-messages", content=b"body")
    runtime = client.post("/v1/runtime/pull-messages", content=b"body")
    control = client.post("/v1/control/start-run", content=b"body")
    assert (fleet.status_code, fleet.text) == (200, "/v1/fleet/pull-messages body")
    assert (runtime.status_code, runtime.text) == (200, "/v1/runtime/pull-messages body")
    assert (control.status_code, control.text) == (200, "/v1/control/start-run body")
    assert "x-recorded" not in fleet.headers
    assert "x-recorded" not in runtime.headers
    assert control.headers["x-recorded"] == "yes"
    assert seen == ["/v1/control/start-run"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/control/start-run",
        "/v1/control/",
        "/v1/control//start-run",
        "/v1/control/%2E%2E/start-run",
        "/v1/control/start-run?x=/v1/fleet/",
        "/v1/fleet/../control/start-run",
        "/v1/runtime/./../control/start-run",
        "/v1/control%2Fstart-run",
        "/V1/control/start-run",
    ],
)
def test_no_request_reaches_a_control_endpoint_past_the_control_middlewares(path: str) -> None:
    """The attack: a path that the router sends to a Control endpoint while the scoping test
    says "not Control" would skip the Control authentication. Whatever reaches the Control
    route has passed the middleware."""
    client, seen = _app(_on_control)
    response = client.get(path)
    reached_control = response.status_code == 200 and response.text.startswith("/v1/control/")
    if reached_control:
        assert response.headers.get("x-recorded") == "yes", path
        assert seen, path


def test_the_fleet_event_log_is_skipped_only_without_a_plugin() -> None:
    applies = predicates(control_middlewares)["FleetEventLogMiddleware"]

    def request(path: str, plugin: object) -> Request:
        app = SimpleNamespace(state=SimpleNamespace(fleet_event_log_plugin=plugin))
        return Request({"type": "http", "method": "POST", "path": path, "headers": [], "app": app})

    assert not applies(request("/v1/fleet/pull-messages", None))
    assert applies(request("/v1/fleet/pull-messages", object()))
    assert not applies(request("/v1/runtime/pull-messages", object()))
