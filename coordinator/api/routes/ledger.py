"""The privacy ledger: per node spent, remaining and history; reconciliation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from coordinator.api.deps import CallerDep
from coordinator.api.routes import ERRORS
from coordinator.api.schemas import MismatchOut, NodeLedgerOut, ReconcileIn, ReconcileOut
from coordinator.services import ledger
from coordinator.services.common import looks_like_id, not_found

router = APIRouter(tags=["ledger"], responses=ERRORS)


@router.get("/ledger", response_model=list[NodeLedgerOut])
def overview(caller: CallerDep) -> list[NodeLedgerOut]:
    """Every visible node's budget, spent and remaining epsilon."""
    return [NodeLedgerOut.of(r) for r in ledger.ledger_overview(caller.ctx.db, caller.actor)]


@router.get("/ledger/nodes/{node_id}", response_model=NodeLedgerOut)
def node_ledger(
    node_id: str,
    caller: CallerDep,
    federation_id: Annotated[str | None, Query(max_length=36)] = None,
) -> NodeLedgerOut:
    """One node's ledger (optionally one federation's part of its history)."""
    if not looks_like_id(node_id):
        raise not_found("node", node_id)
    return NodeLedgerOut.of(
        ledger.node_ledger(caller.ctx.db, caller.actor, node_id, federation_id=federation_id)
    )


@router.post("/ledger/nodes/{node_id}/reconcile", response_model=ReconcileOut)
def reconcile(node_id: str, body: ReconcileIn, caller: CallerDep) -> ReconcileOut:
    """Compare with the node's own ledger rows (auditors may compare). With ``repair``
    (admins only), the node's charges the coordinator lacks are recorded as charged, not
    aggregated, so that the coordinator's ledger stays an upper bound of the node's."""
    if not looks_like_id(node_id):
        raise not_found("node", node_id)
    rows = [
        ledger.NodeLedgerRow(
            e.flower_run_id,
            e.round,
            e.noise_multiplier,
            e.sample_rate,
            e.steps,
            e.kind,
            e.delta,
            e.accountant,
            e.epsilon_after,
            e.row_commitment,
        )
        for e in body.entries
    ]
    found = ledger.reconcile(caller.ctx.db, caller.actor, node_id, rows, repair=body.repair)
    return ReconcileOut(
        ok=not found.mismatches,
        mismatches=[_mismatch(p) for p in found.mismatches],
        repaired=[_mismatch(p) for p in found.repaired],
    )


def _mismatch(p: ledger.Mismatch) -> MismatchOut:
    return MismatchOut(flower_run_id=p.flower_run_id, round=p.round, problem=p.problem, kind=p.kind)
