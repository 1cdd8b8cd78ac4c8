"""The audit log: read it, verify its hash chain."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from coordinator.api.deps import CallerDep
from coordinator.api.routes import ERRORS
from coordinator.api.schemas import AuditEventOut, ChainVerdictOut
from coordinator.services import audit

router = APIRouter(tags=["audit"], responses=ERRORS)


@router.get("/audit/events", response_model=list[AuditEventOut])
def list_events(
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    action: Annotated[str | None, Query(max_length=100)] = None,
) -> list[AuditEventOut]:
    """Events in order, after sequence number `after` (platform admins and auditors)."""
    return [
        AuditEventOut.of(e)
        for e in audit.list_events(
            caller.ctx.db, caller.actor, after=after, limit=limit, action=action
        )
    ]


@router.get("/audit/verification", response_model=ChainVerdictOut)
def verify_chain(caller: CallerDep) -> ChainVerdictOut:
    """Recompute the hash chain; name the first row that was altered, removed or inserted."""
    return ChainVerdictOut(**audit.verify_chain(caller.ctx.db, caller.actor).__dict__)
