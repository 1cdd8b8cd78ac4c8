"""The audit log: read it, verify its hash chain."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from coordinator.api.deps import Caller, CallerDep
from coordinator.api.routes import ERRORS
from coordinator.api.schemas import AuditEventOut, ChainVerdictOut, HeldCheckpointsIn
from coordinator.services import audit
from coordinator.services.errors import InvalidError, NotFoundError
from lepton_fl.crypto.checkpoint import Checkpoint, CheckpointError, verify_checkpoint
from lepton_fl.crypto.release import public_key_pem

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
    """Recompute the hash chain; name the first row that was altered, removed or inserted,
    and hold the log to every checkpoint the coordinator signed."""
    return _verify(caller, [])


@router.post("/audit/verification", response_model=ChainVerdictOut)
def verify_chain_against(caller: CallerDep, body: HeldCheckpointsIn) -> ChainVerdictOut:
    """As GET, and also hold the log to the signed checkpoints you kept: a log cut short
    or rewritten since you received them fails, even with every hash recomputed."""
    public_key = public_key_pem(caller.ctx.signing_key)
    held = []
    for i, signed in enumerate(body.checkpoints):
        try:
            held.append(verify_checkpoint(signed, public_key))
        except CheckpointError as err:
            raise InvalidError(
                f"checkpoints[{i}] is not a checkpoint this coordinator signed: {err.message}",
                code=err.code.replace("-", "_"),
            ) from err
    return _verify(caller, held)


def _verify(caller: Caller, held: list[Checkpoint]) -> ChainVerdictOut:
    verdict = audit.verify_chain(
        caller.ctx.db,
        caller.actor,
        public_key=public_key_pem(caller.ctx.signing_key),
        held=held,
    )
    return ChainVerdictOut(**verdict.__dict__)


@router.get("/audit/checkpoints", response_model=list[dict[str, Any]])
def list_checkpoints(
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Signed checkpoints of the audit chain (row, head hash, time), after row `after`.
    Verify each with the key of GET /signing-key, keep them, and send them back to POST
    /audit/verification (or compare them with other auditors') later."""
    return audit.list_checkpoints(caller.ctx.db, caller.actor, after=after, limit=limit)


@router.get("/audit/checkpoints/latest", response_model=dict[str, Any])
def latest_checkpoint(caller: CallerDep) -> dict[str, Any]:
    """The newest signed checkpoint."""
    latest = audit.latest_checkpoint(caller.ctx.db, caller.actor)
    if latest is None:
        raise NotFoundError("The audit log is empty: nothing is signed yet.", code="no_checkpoint")
    return latest
