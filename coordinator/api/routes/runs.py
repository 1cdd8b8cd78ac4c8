"""Runs: start, list, status, rounds, stop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from coordinator.api.deps import CallerDep
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
def start_run(federation_id: str, caller: CallerDep) -> RunOut:
    """Start a run of a federation on its enrolled, approved members (budgets checked first)."""
    return RunOut.of(
        runs.start_run(
            caller.ctx.db,
            caller.actor,
            federation_id,
            launcher=caller.ctx.launcher,
            settings=caller.ctx.run_settings,
            signing_key=caller.ctx.signing_key,
        )
    )


@router.get("/runs", response_model=list[RunOut])
def list_runs(
    caller: CallerDep,
    federation_id: Annotated[str | None, Query(max_length=36)] = None,
) -> list[RunOut]:
    """Runs (a tenant-scoped key sees those its nodes take part in; other members counted)."""
    return [
        RunOut.of(r, runs.own_members(caller.actor, r))
        for r in runs.list_runs(caller.ctx.db, caller.actor, federation_id=federation_id)
    ]


@router.get("/runs/{run_id}", response_model=RunOut)
async def get_run(run_id: str, caller: CallerDep) -> RunOut:
    """A run's status."""
    run = runs.get_run(caller.ctx.db, caller.actor, run_id)
    return RunOut.of(run, runs.own_members(caller.actor, run))


@router.get("/runs/{run_id}/rounds", response_model=list[RoundOut])
def run_rounds(run_id: str, caller: CallerDep) -> list[RoundOut]:
    """Per-round participants, refusals and metrics (other tenants' nodes counted only)."""
    mine = runs.own_members(caller.actor, runs.get_run(caller.ctx.db, caller.actor, run_id))
    return [RoundOut.of(r, mine) for r in runs.run_rounds(caller.ctx.db, caller.actor, run_id)]


@router.post("/runs/{run_id}/stop", response_model=RunOut, responses=SUPERLINK_ERRORS)
def stop_run(run_id: str, caller: CallerDep) -> RunOut:
    """Stop an active run. Idempotent: a run that already ended is returned as it is, and
    one the SuperLink already ended is recorded with the SuperLink's reason."""
    return RunOut.of(
        runs.stop_run(caller.ctx.db, caller.actor, run_id, launcher=caller.ctx.launcher)
    )
