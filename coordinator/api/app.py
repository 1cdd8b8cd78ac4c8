"""The admin API's application factory."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from coordinator.api.deps import AppContext
from coordinator.api.errors import install_error_handlers
from coordinator.api.request_metrics import RequestTimer, RouteTemplates
from coordinator.api.routes import (
    audit,
    federations,
    ledger,
    metrics,
    nodes,
    releases,
    reports,
    runs,
    tenants,
)
from coordinator.api.schemas import HealthOut
from coordinator.api.settings import AdminSettings
from coordinator.db import Database
from coordinator.services import audit as audit_service
from coordinator.services.gateway import NodeRegistry, RunLauncher, SuperLinkGateway
from coordinator.superlink import SuperLink
from lepton_fl.crypto.release import generate_signing_key, load_signing_key

API_PREFIX = "/api/v1"


def load_or_create_signing_key(settings: AdminSettings) -> Ed25519PrivateKey:
    """The coordinator's release-signing key, generated (0600) on first start."""
    if settings.signing_key_path.exists():
        return load_signing_key(settings.signing_key_path)
    return generate_signing_key(settings.signing_key_path)


def create_app(
    settings: AdminSettings,
    *,
    database: Database | None = None,
    registry: NodeRegistry | None = None,
    launcher: RunLauncher | None = None,
    upgrade: bool = True,
) -> FastAPI:
    """The admin API over `settings` (schema upgraded unless `upgrade` is False).

    Routes that do one short indexed statement or two (single-row reads, creating a
    tenant) are `async` and run it on the event loop: a thread-pool hop costs more than
    the query, and with a busy loop a worker thread waits for the GIL. Everything that can
    take long (the SuperLink's CLI, argon2, epsilon recomputation, scans) is a plain `def`
    route, which FastAPI runs in its thread pool.

    With `settings.superlink`, node enrollment and runs go to that SuperLink through the
    `flwr` CLI; `registry`/`launcher` replace it (storage-level tests only).
    """
    db = database or Database(settings.resolved_database_url)
    if upgrade:
        db.upgrade()
    if settings.superlink is not None and (registry is None or launcher is None):
        superlink = SuperLink(settings.superlink)
        superlink.write_connection_config()
        gateway = SuperLinkGateway(superlink, keys_dir=settings.node_keys_dir)
        registry = registry or gateway
        launcher = launcher or gateway
    app = FastAPI(
        title="Lepton FL admin API",
        version="1",
        description="Tenants, nodes, federations, runs, the privacy ledger, releases and the "
        "audit log of a Lepton FL coordinator. Authenticate with `Authorization: Bearer "
        "<api key>`; every error is JSON with a stable `code` and a `message`.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    signing_key = load_or_create_signing_key(settings)
    audit_service.enable_checkpoints(db, signing_key)
    app.state.context = AppContext(
        settings=settings,
        db=db,
        signing_key=signing_key,
        registry=registry,
        launcher=launcher,
    )
    install_error_handlers(app)

    @app.get(f"{API_PREFIX}/health", response_model=HealthOut, tags=["health"])
    async def health() -> HealthOut:
        """Liveness (no key needed)."""
        return HealthOut(status="ok")

    templates = RouteTemplates()
    for module in (tenants, nodes, federations, runs, ledger, releases, reports, audit):
        app.include_router(module.router, prefix=API_PREFIX)
        templates.add(module.router.routes, API_PREFIX)
    app.include_router(metrics.router)  # /metrics, where Prometheus looks by default
    templates.add(metrics.router.routes)
    templates.add(app.routes)  # the app's own: health, the docs, the OpenAPI document
    app.add_middleware(RequestTimer, metrics=app.state.context.request_metrics, templates=templates)
    _declare_bearer_auth(app)
    return app


PUBLIC_OPERATIONS = {
    f"{API_PREFIX}/health",
    f"{API_PREFIX}/signing-key",
    f"{API_PREFIX}/nodes/enroll",
}


def _declare_bearer_auth(app: FastAPI) -> None:
    """Document the bearer API key in the OpenAPI schema (the docs' Authorize button)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: `Bearer lfk_<prefix>_<secret>`.",
                }
            }
            for path, operations in schema.get("paths", {}).items():
                if path in PUBLIC_OPERATIONS:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
