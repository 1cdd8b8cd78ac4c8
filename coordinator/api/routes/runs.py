"""Runs: start, list, status, rounds, stop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from coordinator.api.deps import ActorDep, ContextDep
from coordinator.api.routes import ERRORS, SUPERLINK_ERRORS
from coordinator.api.schemas import RoundOut, RunOut
from coordinator.services import runs

router = APIRouter(tags=["runs"], responses=ERRORS)


@router.post(
    "/federations/{federation_id}/runs",
    response_model=RunOut,
    status_code=status.HTTP_201_CREATED,
    responses=SUPERLINK_ERRORS,
)
def start_run(federation_id: str, actor: ActorDep, ctx: ContextDep) -> RunOut:
    """Start a run of a federation on its enrolled, approved members (budgets checked first)."""
    return RunOut.of(
        runs.start_run(
            ctx.db, actor, federation_id, launcher=ctx.launcher, settings=ctx.run_settings
        )
    )


@router.get("/runs", response_model=list[RunOut])
def list_runs(
    actor: ActorDep,
    ctx: ContextDep,
    federation_id: Annotated[str | None, Query(max_length=36)] = None,
) -> list[RunOut]:
    """Runs (a tenant admin sees those its nodes take part in)."""
    return [RunOut.of(r) for r in runs.list_runs(ctx.db, actor, federation_id=federation_id)]


@router.get("/runs/{run_id}", response_model=RunOut)
def get_run(run_id: str, actor: ActorDep, ctx: ContextDep) -> RunOut:
    """A run's status."""
    return RunOut.of(runs.get_run(ctx.db, actor, run_id))


@router.get("/runs/{run_id}/rounds", response_model=list[RoundOut])
def run_rounds(run_id: str, actor: ActorDep, ctx: ContextDep) -> list[RoundOut]:
    """Per-round participants, refusals and metrics."""
    return [RoundOut.of(r) for r in runs.run_rounds(ctx.db, actor, run_id)]


@router.post("/runs/{run_id}/stop", response_model=RunOut, responses=SUPERLINK_ERRORS)
def stop_run(run_id: str, actor: ActorDep, ctx: ContextDep) -> RunOut:
    """Stop an active run."""
    return RunOut.of(runs.stop_run(ctx.db, actor, run_id, launcher=ctx.launcher))
