"""Request latency of the admin API: a pure ASGI middleware and the series it keeps.

Requests are labelled by the route's template (``/api/v1/runs/{run_id}``), never the raw
path, and by a method from a fixed list, so a client cannot grow the series by asking for
made-up paths or methods: a path no route matches is ``<unmatched>``. These series are the
only ones the admin service keeps in memory (they describe this process, not the database);
they reset when the process restarts, as Prometheus counters may.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
UNMATCHED = "<unmatched>"


class RequestMetrics(Collector):
    """This process's request series (and its process_* series), in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "lepton_api_request_duration_seconds",
            "Admin API request latency, from the request's arrival to the end of its response.",
            labelnames=("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "lepton_api_requests",
            "Admin API requests by method, route template and response status.",
            labelnames=("method", "route", "status"),
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        # the labelled children, looked up once (`labels()` costs more than the update)
        self._latency: dict[tuple[str, str], Histogram] = {}
        self._requests: dict[tuple[str, str, int], Counter] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one request."""
        latency = self._latency.get((method, route))
        if latency is None:
            latency = self._latency[(method, route)] = self.latency.labels(method, route)
        requests = self._requests.get((method, route, status))
        if requests is None:
            requests = self._requests[(method, route, status)] = self.requests.labels(
                method, route, str(status)
            )
        latency.observe(seconds)
        requests.inc()

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


class RouteTemplates:
    """The template of every route of an app, found by the route (or endpoint) that the
    router leaves in the request's scope. FastAPI keeps an included router's routes as they
    were declared (``/runs/{run_id}``), so each router's prefix is added here."""

    def __init__(self) -> None:
        self._by_route: dict[int, str] = {}
        self._by_endpoint: dict[int, str] = {}

    def add(self, routes: Iterable[BaseRoute], prefix: str = "") -> None:
        """Remember `routes`, served under `prefix`."""
        for route in routes:
            path = getattr(route, "path", None)
            if not isinstance(path, str):
                continue  # an included router: its routes are added with their prefix
            self._by_route[id(route)] = prefix + path
            endpoint = getattr(route, "endpoint", None)
            if endpoint is not None:
                self._by_endpoint[id(endpoint)] = prefix + path

    def of(self, scope: Scope) -> str:
        """The template of the route that handled the request, else `UNMATCHED`."""
        route = scope.get("route")
        if route is not None and id(route) in self._by_route:
            return self._by_route[id(route)]
        endpoint = scope.get("endpoint")  # Starlette's own routes (the docs) set only this
        if endpoint is not None and id(endpoint) in self._by_endpoint:
            return self._by_endpoint[id(endpoint)]
        return UNMATCHED


class RequestTimer:
    """Times every HTTP request of the app it wraps into `RequestMetrics`."""

    def __init__(self, app: ASGIApp, *, metrics: RequestMetrics, templates: RouteTemplates) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes the app ends as a 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method = str(scope.get("method", ""))
            self.metrics.observe(
                method if method in METHODS else "other",
                self.templates.of(scope),
                status,
                time.perf_counter() - started,
            )
