"""The auditor's privacy report, signed by the coordinator."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from coordinator.api.deps import CallerDep
from coordinator.api.routes import ERRORS
from coordinator.api.schemas import SignedReportOut
from coordinator.services import reports

router = APIRouter(tags=["reports"], responses=ERRORS)

_Id = Annotated[str | None, Query(max_length=36)]


@router.get("/reports/privacy", response_model=SignedReportOut)
def privacy_report(
    caller: CallerDep,
    tenant_id: _Id = None,
    federation_id: _Id = None,
    release_id: _Id = None,
) -> SignedReportOut:
    """Every ledger entry behind every epsilon, per node and federation, with budgets, runs
    round by round, releases and the audit log's signed checkpoint, for one tenant, one
    federation or one release (none: the platform). `signature` is the coordinator's
    detached Ed25519 signature over the canonical JSON of `report`: check it and recompute
    every epsilon offline with `lepton audit verify`. A tenant-scoped key sees its own nodes;
    other members appear only as counts."""
    signed = reports.privacy_report(
        caller.ctx.db,
        caller.actor,
        caller.ctx.signing_key,
        tenant_id=tenant_id,
        federation_id=federation_id,
        release_id=release_id,
    )
    return SignedReportOut(**signed)
