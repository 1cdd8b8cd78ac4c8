"""Request dependencies: the services context and the authenticated actor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from coordinator.api.request_metrics import RequestMetrics
from coordinator.api.settings import AdminSettings
from coordinator.db import Database
from coordinator.services import keys
from coordinator.services.common import Actor
from coordinator.services.errors import UnauthenticatedError
from coordinator.services.gateway import NodeRegistry, RunLauncher
from coordinator.services.runs import RunSettings


@dataclass
class AppContext:
    """What the routes hand to the services."""

    settings: AdminSettings
    db: Database
    signing_key: Ed25519PrivateKey
    registry: NodeRegistry | None
    launcher: RunLauncher | None
    request_metrics: RequestMetrics = field(default_factory=RequestMetrics)

    @property
    def run_settings(self) -> RunSettings:
        # The ServerApp gets no database URL: it writes the run journal, which the admin
        # service reads (coordinator.services.round_sink.JournalFollower).
        return RunSettings(
            runs_dir=self.settings.runs_dir,
            round_timeout_s=self.settings.round_timeout_s,
            connect_timeout_s=self.settings.connect_timeout_s,
        )


async def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


async def current_actor(request: Request) -> Actor:
    """The actor behind `Authorization: Bearer <api key>`; 401 otherwise.

    A cached key is answered without leaving the event loop; a new key is checked (argon2,
    one database read) in the thread pool. (The header is parsed here rather than by
    FastAPI's HTTPBearer, one dependency less on every request; the OpenAPI document still
    declares the bearer scheme, see `coordinator.api.app`.)
    """
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise UnauthenticatedError(
            "This endpoint needs an API key: send `Authorization: Bearer <api key>`. The "
            "first platform-admin key comes from `lepton coordinator create-admin-key`.",
            code="unauthenticated",
        )
    cached = keys.cached_actor(presented)
    if cached is not None:
        return cached
    context: AppContext = request.app.state.context
    return await run_in_threadpool(keys.authenticate, context.db, presented)


@dataclass(frozen=True)
class Caller:
    """Who is calling and the app's context: one dependency for both (each dependency
    FastAPI resolves costs a measurable share of a short request)."""

    actor: Actor
    ctx: AppContext


async def current_caller(request: Request) -> Caller:
    """The authenticated actor and the app context."""
    return Caller(actor=await current_actor(request), ctx=request.app.state.context)


ContextDep = Annotated[AppContext, Depends(get_context)]
ActorDep = Annotated[Actor, Depends(current_actor)]
CallerDep = Annotated[Caller, Depends(current_caller)]
