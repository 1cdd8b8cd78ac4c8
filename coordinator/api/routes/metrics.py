"""`GET /metrics`: the admin service's Prometheus series, for an API key's scope."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from coordinator.api.deps import CallerDep
from coordinator.api.request_metrics import RequestMetrics
from coordinator.api.schemas import ErrorOut
from coordinator.services.common import scope_tenant
from coordinator.services.metrics import AdminCollector

router = APIRouter(tags=["metrics"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format 0.0.4.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    401: {"model": ErrorOut, "description": "No valid API key."},
    403: {"model": ErrorOut, "description": "This role may not do this."},
}


@router.get("/metrics", response_class=Response, responses=RESPONSES)
def metrics(caller: CallerDep) -> Response:
    """Runs by state, round durations, participants, dropouts and refusals by code, and the
    privacy ledger (epsilon budget, spent and remaining per tenant and node, spent per
    federation), computed from the database at each scrape; for platform-wide keys also
    the API's request latency. Send an API key as a bearer token (Prometheus:
    `authorization: {credentials_file: ...}`); a tenant-scoped key sees only its tenant's
    series. Every series: docs/admin-api.md#metrics."""
    ctx = caller.ctx
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        AdminCollector(ctx.db, caller.actor, node_labels=ctx.settings.metrics_node_labels)
    )
    if scope_tenant(caller.actor) is None:  # this process's series describe the platform
        request_metrics: RequestMetrics = ctx.request_metrics
        registry.register(request_metrics)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
