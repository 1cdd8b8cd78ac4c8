"""The coordinator's privacy ledger: every node's DP-SGD charge, per round, per run.

Rows are exactly Opacus accountant history entries (noise multiplier, sample rate, steps)
plus the delta and accountant they were charged under, so epsilon is always recomputed
from the history with Opacus (`lepton_fl.privacy.epsilon_spent`), never summed. The
admin service records them from the run journal's typed records (`record_round`, fed by
`coordinator.services.round_sink`), in the same transaction as the round and its audit
event. `reconcile` compares this ledger with a node's own. A scheduled evaluation's DP release is
charged as a row of kind "evaluate" (`record_evaluation`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sqlmodel import Session, col, select

from coordinator.db import Database
from coordinator.db.tables import Federation, LedgerEntry, Node, Run, RunRound
from coordinator.fl.journal import EvaluationRecord, RoundRecord
from coordinator.services import audit
from coordinator.services.common import (
    Actor,
    check_tenant_visible,
    not_found,
    now_iso,
    require_writer,
    scope_tenant,
)
from coordinator.services.errors import NotFoundError
from lepton_fl.config import AccountantName
from lepton_fl.privacy import AccountantStep, epsilon_spent
from lepton_fl.wire import PrivacyCharge


def history_epsilon(entries: Sequence[LedgerEntry]) -> float:
    """Epsilon of a history, at the delta and accountant of its latest charge."""
    if not entries:
        return 0.0
    latest = entries[-1]
    steps = [AccountantStep(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]
    accountant: AccountantName = "prv" if latest.accountant == "prv" else "rdp"
    return epsilon_spent(steps, delta=latest.delta, accountant=accountant)


def accountable_epsilon(entries: Sequence[LedgerEntry]) -> float:
    """The epsilon a node's budget is held to: the larger of the coordinator's own figure
    (`history_epsilon`) and the highest the node itself reported (its whole history, which
    may hold charges whose replies never reached the coordinator)."""
    return at_least_reported(history_epsilon(entries), entries)


def at_least_reported(coordinator_epsilon: float, entries: Sequence[LedgerEntry]) -> float:
    """`accountable_epsilon` given the coordinator's own figure for `entries`."""
    return max(coordinator_epsilon, max((e.epsilon_reported for e in entries), default=0.0))


def node_entries(session: Session, node_id: str) -> list[LedgerEntry]:
    """A node's whole history, in the order it was charged."""
    return list(
        session.exec(
            select(LedgerEntry)
            .where(LedgerEntry.node_id == node_id)
            .order_by(col(LedgerEntry.recorded_at), col(LedgerEntry.round))
        ).all()
    )


def record_round(db: Database, run_id: str, record: RoundRecord) -> bool:
    """Record one round of a run (a journal `RoundRecord`) with its charges and audit
    event, in one transaction. Returns False if the round was already recorded."""
    with db.write() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"No run with id {run_id!r} exists.", code="run_not_found")
        rnd = record.round
        if session.get(RunRound, (run_id, rnd)) is not None:
            return False
        by_name = {m["name"]: m["node_id"] for m in json.loads(run.members)}
        participants = [by_name[n] for n in record.participants if n in by_name]
        refusals = {by_name.get(name, name): why for name, why in record.refusals.items()}
        outcomes = {
            by_name.get(name, name): [node.status, node.code]
            for name, node in record.nodes.items()
            if node.status != "ok"
        }
        session.add(
            RunRound(
                run_id=run_id,
                round=rnd,
                participants=json.dumps(participants),
                refusals=json.dumps(refusals, sort_keys=True),
                outcomes=json.dumps(outcomes, sort_keys=True),
                num_examples=record.num_examples,
                train_loss=None,  # the journal carries no loss: it stays at the nodes
                seconds=_finite(record.seconds),
                recorded_at=now_iso(),
            )
        )
        charges: dict[str, float] = {}
        not_aggregated: list[str] = []
        for name, node in record.nodes.items():
            node_id = by_name.get(name)
            if node.charge is None or node_id is None:
                continue
            if _recorded(session, run_id, node_id, rnd, "train"):
                continue  # a reply to a replayed round: the first charge stands
            aggregated = node.status == "ok"
            session.add(
                _ledger_entry(run, node_id, rnd, node.charge, kind="train", aggregated=aggregated)
            )
            charges[node_id] = node.charge.epsilon
            if not aggregated:
                not_aggregated.append(node_id)
        run.rounds_completed = max(run.rounds_completed, rnd)
        if run.state == "submitted":
            run.state = "running"
        session.add(run)
        audit.append_event(
            session,
            Actor(role="system", label="serverapp"),
            "run.round",
            f"run:{run_id}",
            {
                "round": rnd,
                "participants": participants,
                "epsilon_reported": charges,
                **({"charged_not_aggregated": not_aggregated} if not_aggregated else {}),
            },
        )
    return True


def _recorded(session: Session, run_id: str, node_id: str, rnd: int, kind: str) -> bool:
    """Whether the coordinator already holds this node's charge for (run, round, kind)."""
    found = session.exec(
        select(LedgerEntry.id).where(
            LedgerEntry.run_id == run_id,
            LedgerEntry.node_id == node_id,
            LedgerEntry.round == rnd,
            LedgerEntry.kind == kind,
        )
    ).first()
    return found is not None


def record_evaluation(db: Database, run_id: str, record: EvaluationRecord) -> bool:
    """Record the DP charges of a run's scheduled evaluation (a journal `EvaluationRecord`),
    with an audit event, in one transaction. Returns False if already recorded.

    A node charges its own ledger before its noised counts leave it; the coordinator records
    the same charge, so its epsilon for a node is never below the node's own."""
    rnd = record.round
    with db.write() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"No run with id {run_id!r} exists.", code="run_not_found")
        by_name = {m["name"]: m["node_id"] for m in json.loads(run.members)}
        charges: dict[str, float] = {}
        for name, node in record.nodes.items():
            node_id = by_name.get(name)
            if node.charge is None or node_id is None:
                continue
            if _recorded(session, run_id, node_id, rnd, "evaluate"):
                continue
            session.add(_ledger_entry(run, node_id, rnd, node.charge, kind="evaluate"))
            charges[node_id] = node.charge.epsilon
        if not charges:
            return False
        audit.append_event(
            session,
            Actor(role="system", label="serverapp"),
            "run.evaluation",
            f"run:{run_id}",
            {"round": rnd, "epsilon_reported": charges},
        )
    return True


def _ledger_entry(
    run: Run,
    node_id: str,
    rnd: int,
    charge: PrivacyCharge,
    *,
    kind: str,
    aggregated: bool = True,
) -> LedgerEntry:
    return LedgerEntry(
        node_id=node_id,
        federation_id=run.federation_id,
        run_id=run.id,
        round=rnd,
        noise_multiplier=charge.noise_multiplier,
        sample_rate=charge.sample_rate,
        steps=charge.steps,
        delta=charge.delta,
        accountant=charge.accountant,
        epsilon_reported=charge.epsilon,
        recorded_at=now_iso(),
        kind=kind,
        aggregated=aggregated,
        node_ledger_row=charge.ledger_row,
    )


def _finite(value: object) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


@dataclass
class FederationSpend:
    """What a node spent in one federation."""

    federation_id: str
    federation_name: str
    epsilon: float
    rounds: int


@dataclass
class NodeLedger:
    """A node's ledger report."""

    node_id: str
    node_name: str
    tenant_id: str
    epsilon_budget: float
    epsilon_spent: float
    epsilon_remaining: float
    epsilon_reported: float | None
    federations: list[FederationSpend] = field(default_factory=list)
    history: list[LedgerEntry] = field(default_factory=list)


def node_ledger(
    db: Database, actor: Actor, node_id: str, *, federation_id: str | None = None
) -> NodeLedger:
    """Spent, remaining and history of one node (optionally only one federation's)."""
    with db.read() as session:
        node = session.get(Node, node_id)
        if node is None:
            raise not_found("node", node_id)
        check_tenant_visible(actor, node.tenant_id, "node", node_id)
        entries = node_entries(session, node_id)
        names = {f.id: f.name for f in session.exec(select(Federation)).all()}
    spent = history_epsilon(entries)
    accountable = accountable_epsilon(entries)
    by_federation: dict[str, list[LedgerEntry]] = {}
    for e in entries:
        by_federation.setdefault(e.federation_id, []).append(e)
    if federation_id is not None and federation_id not in names:
        raise not_found("federation", federation_id)
    report = NodeLedger(
        node_id=node.id,
        node_name=node.name,
        tenant_id=node.tenant_id,
        epsilon_budget=node.epsilon_budget,
        epsilon_spent=spent,
        epsilon_remaining=max(0.0, node.epsilon_budget - accountable),
        epsilon_reported=max(e.epsilon_reported for e in entries) if entries else None,
        federations=[
            FederationSpend(fid, names.get(fid, fid), history_epsilon(rows), len(rows))
            for fid, rows in by_federation.items()
            if federation_id is None or fid == federation_id
        ],
        history=[e for e in entries if federation_id is None or e.federation_id == federation_id],
    )
    return report


def ledger_overview(db: Database, actor: Actor) -> list[NodeLedger]:
    """Every visible node's spent and remaining budget (no history)."""
    scope = scope_tenant(actor)
    with db.read() as session:
        query = select(Node).order_by(col(Node.created_at))
        if scope is not None:
            query = query.where(Node.tenant_id == scope)
        node_ids = [n.id for n in session.exec(query).all()]
    reports = [node_ledger(db, actor, node_id) for node_id in node_ids]
    for report in reports:
        report.history = []
    return reports


@dataclass(frozen=True)
class NodeLedgerRow:
    """One row of a node's own ledger: the Flower run id, the round, its kind and charge
    (``delta``, ``accountant`` and ``epsilon_after`` are needed only to repair)."""

    flower_run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    kind: str = "train"
    delta: float | None = None
    accountant: str | None = None
    epsilon_after: float | None = None
    row_commitment: str | None = None  # the node's commitment to it (ledger schema 5)


@dataclass(frozen=True)
class Mismatch:
    """A difference between the coordinator's ledger and a node's own."""

    flower_run_id: str
    round: int
    problem: str
    kind: str = "train"


@dataclass(frozen=True)
class Reconciliation:
    """What `reconcile` found, and what it repaired."""

    mismatches: list[Mismatch]
    repaired: list[Mismatch] = field(default_factory=list)


MISSING_HERE = "in the node's ledger but not the coordinator's"


def reconcile(
    db: Database,
    actor: Actor,
    node_id: str,
    node_rows: Sequence[NodeLedgerRow],
    *,
    repair: bool = False,
) -> Reconciliation:
    """Compare the coordinator's ledger of a node with the node's own ledger.

    Only runs this coordinator submitted are compared (a node may train elsewhere too).
    With ``repair`` (a writer's call), a charge the node recorded that the coordinator lacks
    (its reply never came: the node crashed or the coordinator restarted after the update
    left the node) is recorded as charged, not aggregated, with an audit event: the
    coordinator's ledger only grows, so it stays an upper bound of the node's. Differing
    charges and charges only the coordinator holds cannot be repaired; they stay listed.
    """
    if repair:
        require_writer(actor, action="repair a ledger")
    mismatches = compare_ledgers(db, actor, node_id, node_rows)
    if not repair:
        return Reconciliation(mismatches)
    rows = {(r.flower_run_id, r.round, r.kind): r for r in node_rows}
    fixable = [
        (m, rows[(m.flower_run_id, m.round, m.kind)])
        for m in mismatches
        if m.problem == MISSING_HERE and _repairable(rows[(m.flower_run_id, m.round, m.kind)])
    ]
    repaired = _record_repairs(db, actor, node_id, fixable)
    done = {(m.flower_run_id, m.round, m.kind) for m in repaired}
    left = [m for m in mismatches if (m.flower_run_id, m.round, m.kind) not in done]
    return Reconciliation(left, repaired)


def _repairable(row: NodeLedgerRow) -> bool:
    return (
        row.delta is not None
        and 0 < row.delta < 1
        and row.accountant in ("rdp", "prv")
        and row.epsilon_after is not None
        and math.isfinite(row.epsilon_after)
        and row.epsilon_after >= 0
    )


def _record_repairs(
    db: Database, actor: Actor, node_id: str, fixable: Sequence[tuple[Mismatch, NodeLedgerRow]]
) -> list[Mismatch]:
    """Record the node's charges the coordinator lacks, in one transaction."""
    if not fixable:
        return []
    repaired: list[Mismatch] = []
    with db.write() as session:
        by_flower = {
            str(r.flower_run_id): r
            for r in session.exec(
                select(Run).where(col(Run.flower_run_id).in_({m.flower_run_id for m, _ in fixable}))
            ).all()
        }
        for mismatch, row in fixable:
            run = by_flower.get(row.flower_run_id)
            if run is None or _recorded(session, run.id, node_id, row.round, row.kind):
                continue
            assert row.delta is not None
            assert row.accountant is not None
            assert row.epsilon_after is not None
            session.add(
                LedgerEntry(
                    node_id=node_id,
                    federation_id=run.federation_id,
                    run_id=run.id,
                    round=row.round,
                    noise_multiplier=row.noise_multiplier,
                    sample_rate=row.sample_rate,
                    steps=row.steps,
                    delta=row.delta,
                    accountant=row.accountant,
                    epsilon_reported=row.epsilon_after,
                    recorded_at=now_iso(),
                    kind=row.kind,
                    aggregated=False,
                    source="node_ledger",
                    node_ledger_row=row.row_commitment,
                )
            )
            repaired.append(replace(mismatch, problem="recorded from the node's ledger"))
        if repaired:
            audit.append_event(
                session,
                actor,
                "ledger.repair",
                f"node:{node_id}",
                {
                    "recorded": [
                        {"flower_run_id": m.flower_run_id, "round": m.round, "kind": m.kind}
                        for m in repaired
                    ]
                },
            )
    return repaired


def compare_ledgers(
    db: Database, actor: Actor, node_id: str, node_rows: Sequence[NodeLedgerRow]
) -> list[Mismatch]:
    """The differences between the coordinator's ledger of a node and the node's own."""
    report = node_ledger(db, actor, node_id)
    with db.read() as session:
        flower_ids = {
            r.id: r.flower_run_id
            for r in session.exec(
                select(Run).where(col(Run.id).in_({e.run_id for e in report.history}))
            ).all()
        }
        known_runs = {
            r.flower_run_id
            for r in session.exec(select(Run).where(col(Run.flower_run_id).is_not(None))).all()
        }
    mine = {(str(flower_ids.get(e.run_id)), e.round, e.kind): e for e in report.history}
    theirs = {
        (r.flower_run_id, r.round, r.kind): r for r in node_rows if r.flower_run_id in known_runs
    }
    problems: list[Mismatch] = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        run_round = (key[0], key[1])
        if a is None:
            problems.append(Mismatch(*run_round, MISSING_HERE, key[2]))
        elif b is None:
            problems.append(
                Mismatch(*run_round, "in the coordinator's ledger but not the node's", key[2])
            )
        elif a.node_ledger_row and b.row_commitment and a.node_ledger_row != b.row_commitment:
            problems.append(
                Mismatch(
                    *run_round,
                    "the node's ledger row is not the one the node reported when it charged "
                    f"(reported {a.node_ledger_row[:16]}..., now {b.row_commitment[:16]}...): "
                    "the node's ledger was rewritten after the charge",
                    key[2],
                )
            )
        elif (
            not math.isclose(a.noise_multiplier, b.noise_multiplier, rel_tol=1e-9)
            or not math.isclose(a.sample_rate, b.sample_rate, rel_tol=1e-9)
            or a.steps != b.steps
        ):
            problems.append(
                Mismatch(
                    *run_round,
                    f"charges differ: coordinator (sigma={a.noise_multiplier:g}, "
                    f"q={a.sample_rate:g}, steps={a.steps}), node (sigma={b.noise_multiplier:g}, "
                    f"q={b.sample_rate:g}, steps={b.steps})",
                    key[2],
                )
            )
    return problems
