"""Flower's SuperLink middlewares, each run only for the requests it acts on.

Flower 1.42's SuperLink serves its Fleet, Runtime and Control APIs from one FastAPI app
(`flwr.superlink.main.create_app`) whose every request passes eight Starlette
`BaseHTTPMiddleware` layers (`flwr.superlink.main._get_middleware`). Five of them act only on
some paths and hand every other request straight to the next layer (``return await
call_next(request)`` as their first step): the four Control middlewares on ``/v1/control/``
(the response one on its sensitive routes), and the Fleet event log on ``/v1/fleet/`` when an
event-log plugin is set (none is: we do not enable Flower's event log). Each
layer still costs what `BaseHTTPMiddleware` costs per request (a task group, memory streams,
a wrapped response), and that machinery, not Flower's handlers, is where the SuperLink's one
Python process spent its time: sampled with ``py-spy --gil`` over steady rounds of 20 nodes,
98% of the time it held the GIL was the event loop's Starlette/anyio request machinery.
What scoping saves per round is measured side by side by bench/round_overhead.py (path
``ours-unscoped``).

`scope_middlewares` replaces those five classes, in the module `create_app` reads them from,
with subclasses that pass a request that their own first condition would pass on straight
to the next layer, before any `BaseHTTPMiddleware` machinery, and run the middleware
unchanged otherwise. Each test is the middleware's own (Flower's predicate, or the same
path prefix Flower tests). Every request then goes through three layers: the error
translator, the protobuf translation and the node authentication (which acts on Fleet
requests). Nothing is skipped that could act on a request. It must run before
`create_app` (the launcher installs it before Flower's entry point); on any other Flower
version the launcher refuses to start, and `tests/test_superlink_middleware.py` pins the
classes and predicates it relies on.
Upstream we would propose pure ASGI middlewares, or mounting the Control middlewares on the
Control router only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from types import ModuleType
from typing import Any

from coordinator.fleet_front import FLEET_PREFIX
from lepton_fl.flower_pins import FlowerVersionError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AppliesTo = Callable[[Any], bool]
"""``applies(request) -> bool``: whether the middleware may act on the request."""

SCOPED = (
    "ControlSensitiveResponseMiddleware",
    "ControlAuthenticationMiddleware",
    "ControlLicenseMiddleware",
    "ControlEventLogMiddleware",
    "FleetEventLogMiddleware",
)
"""The `flwr.superlink.main` names replaced; the other three layers (the error translator,
the protobuf translation, the node authentication) run for every request, as in Flower."""


def scoped(base: type, applies: AppliesTo) -> type:
    """`base` (a `BaseHTTPMiddleware`) that hands a request it does not apply to straight to
    the next layer. Idempotent: a class made here is returned as it is."""
    if getattr(base, "__lepton_scoped__", False):
        return base
    from starlette.requests import Request

    async def __call__(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not applies(Request(scope)):
            await self.app(scope, receive, send)
            return
        await base.__call__(self, scope, receive, send)

    return type(
        base.__name__,
        (base,),
        {"__call__": __call__, "__lepton_scoped__": True, "__module__": base.__module__},
    )


def predicates(control: ModuleType) -> dict[str, AppliesTo]:
    """Each scoped middleware's own test of whether it acts on a request (Flower's
    predicates in `control`, `flwr.superlink.routers.control.middlewares`)."""
    for name in ("_is_control_path", "_is_control_sensitive_route"):
        if not callable(getattr(control, name, None)):
            raise FlowerVersionError(
                f"{control.__name__} has no {name}: the Control middlewares of this Flower "
                "do not decide the way 1.42's do."
            )
    on_control: AppliesTo = lambda request: control._is_control_path(request.url.path)  # noqa: E731
    return {
        "ControlSensitiveResponseMiddleware": control._is_control_sensitive_route,
        "ControlAuthenticationMiddleware": on_control,
        "ControlLicenseMiddleware": on_control,
        "ControlEventLogMiddleware": on_control,
        "FleetEventLogMiddleware": lambda request: (
            request.url.path.startswith(FLEET_PREFIX)
            and getattr(request.app.state, "fleet_event_log_plugin", None) is not None
        ),
    }


def scope_middlewares(main: ModuleType, control: ModuleType) -> None:
    """Replace `SCOPED` in `main` (`flwr.superlink.main`, whose ``_get_middleware`` reads
    them by name when `create_app` runs) with their scoped versions. Idempotent."""
    tests = predicates(control)
    for name in SCOPED:
        base = getattr(main, name, None)
        if not isinstance(base, type) or not callable(getattr(base, "dispatch", None)):
            raise FlowerVersionError(
                f"{main.__name__} has no middleware {name}: the SuperLink app of this Flower "
                "is not built the way 1.42's is."
            )
        setattr(main, name, scoped(base, tests[name]))
