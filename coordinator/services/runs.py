"""Runs: start (submit the Flower app to the SuperLink), stop, status, rounds.

Starting a run checks, before anything is submitted, that the federation has enough
enrolled, approved members and that none of them would exceed its budget: the federation's
target epsilon (what the whole run, training and its scheduled evaluation, is calibrated to
at each node) plus what the node has spent (the larger of the coordinator's ledger and the
node's own last report, `ledger.accountable_epsilon`) must not exceed the node's budget
(`lepton_fl.privacy.budget.run_fits_budget`, the rule the nodes' calibration follows).
The refusal names the node and the numbers. Runs of different federations run side by
side; a federation runs one at a time.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from coordinator.db import Database
from coordinator.db.tables import Federation, FederationMember, Node, Run, RunRound, Tenant
from coordinator.fl.journal import read_journal
from coordinator.services import audit
from coordinator.services.common import (
    SYSTEM,
    Actor,
    looks_like_id,
    new_id,
    not_found,
    now_iso,
    require_role,
    require_writer,
    scope_tenant,
)
from coordinator.services.errors import ConflictError, InvalidError, ServiceError, no_superlink
from coordinator.services.federations import check_definition, load_definition
from coordinator.services.gateway import RunLauncher
from coordinator.services.ledger import accountable_epsilon, node_entries
from lepton_fl.config import Member, RunSpec
from lepton_fl.crypto.run_authorization import authorize_run
from lepton_fl.privacy.budget import planned_run_epsilon, run_fits_budget

ACTIVE_STATES = ("submitted", "running")
TERMINAL_STATES = ("finished", "failed", "stopped")


@dataclass(frozen=True)
class RunSettings:
    """Where runs keep their journals (the admin service reads them, see round_sink)."""

    runs_dir: Path
    round_timeout_s: float = 300.0
    connect_timeout_s: float = 120.0


def start_run(
    db: Database,
    actor: Actor,
    federation_id: str,
    *,
    launcher: RunLauncher | None,
    settings: RunSettings,
    signing_key: Ed25519PrivateKey,
) -> Run:
    """Check members and budgets, record the run, submit it; return the run.

    The submitted RunSpec carries the run's authorization, signed with ``signing_key`` (the
    coordinator's key, which nodes pin): every node refuses a run without it.
    """
    require_writer(actor, action="start runs")
    require_role(actor, "platform_admin", action="start runs")
    with db.read() as session:
        federation = (
            session.get(Federation, federation_id) if looks_like_id(federation_id) else None
        )
        if federation is None:
            raise not_found("federation", federation_id)
        definition = load_definition(federation)
        spec = check_definition(definition)
        rows = session.exec(
            select(Node, Tenant)
            .join(FederationMember, col(FederationMember.node_id) == Node.id)
            .join(Tenant, col(Tenant.id) == Node.tenant_id)
            .where(
                FederationMember.federation_id == federation_id,
                FederationMember.status == "approved",
                Node.state == "enrolled",
                col(Tenant.disabled).is_(False),
            )
            .order_by(col(Node.name))
        ).all()
        nodes = [node for node, _tenant in rows]
        spent = {n.id: accountable_epsilon(node_entries(session, n.id)) for n in nodes}
    if len(nodes) < definition.min_participants:
        raise ConflictError(
            f"Federation {federation.name} has {len(nodes)} enrolled, approved member nodes "
            f"but needs at least {definition.min_participants} (min_participants). Enroll "
            "and add more nodes first.",
            code="not_enough_members",
        )
    planned = planned_run_epsilon(definition.privacy.target_epsilon)
    for node in nodes:
        decision = run_fits_budget(
            spent[node.id],
            target_epsilon=definition.privacy.target_epsilon,
            budget=node.epsilon_budget,
        )
        if not decision.allowed:
            raise ConflictError(
                f"Node {node.name} cannot take part: {decision.reason} Remove the node from "
                "the federation or lower the federation's target epsilon.",
                code="budget_exceeded",
            )
    if launcher is None:
        raise no_superlink()
    run_id = new_id()
    run_dir = settings.runs_dir / run_id
    journal = run_dir / "journal.jsonl"
    members = [
        {
            "node_id": n.id,
            "name": n.name,
            "tenant_id": n.tenant_id,
            "flower_node_id": int(str(n.flower_node_id)),
        }
        for n in nodes
    ]
    try:
        run_spec = RunSpec(
            federation=spec,
            members=tuple(
                Member(name=n.name, node_id=int(str(n.flower_node_id)), public_key=n.public_key)
                for n in nodes
            ),
            journal_path=str(journal),
            round_timeout_s=settings.round_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            admin_run_id=run_id,
        )
        with db.read() as session:
            checkpoint = audit.latest_signed(session)
        run_spec = authorize_run(run_spec, signing_key, audit_checkpoint=checkpoint)
    except ValueError as err:
        raise InvalidError(f"The run is invalid: {err}", code="invalid_run") from err
    with db.write() as session:
        active = session.exec(
            select(Run).where(Run.federation_id == federation_id, col(Run.state).in_(ACTIVE_STATES))
        ).first()
        if active is not None:
            raise ConflictError(
                f"Federation {federation.name} already has run {active.id} {active.state}; "
                "wait for it to end or stop it first.",
                code="run_already_running",
            )
        run = Run(
            id=run_id,
            federation_id=federation_id,
            state="submitted",
            planned_epsilon=planned,
            rounds_planned=definition.rounds,
            members=json.dumps(members),
            spec=_public_spec(run_spec),
            journal_path=str(journal),
            created_at=now_iso(),
        )
        session.add(run)
        audit.append_event(
            session,
            actor,
            "run.start",
            f"run:{run_id}",
            {
                "federation_id": federation_id,
                "federation_digest": spec.digest(),
                "members": [m["node_id"] for m in members],
                "planned_epsilon": planned,
            },
        )
    try:
        flower_run_id = launcher.submit(run_spec, work_dir=run_dir)
    except ServiceError as err:
        mark_ended(db, run_id, state="failed", failure=err.message, actor=SYSTEM)
        raise
    with db.write() as session:
        stored = session.get(Run, run_id)
        assert stored is not None
        if stored.flower_run_id is None:
            stored.flower_run_id = str(flower_run_id)
            session.add(stored)
    return get_run(db, actor, run_id)


def _public_spec(run: RunSpec) -> str:
    """The RunSpec as stored."""
    return json.dumps(run.model_dump(mode="json"), sort_keys=True)


def mark_started(db: Database, run_id: str, *, flower_run_id: int) -> None:
    """The ServerApp started: the run is running under this Flower run id."""
    with db.write() as session:
        run = session.get(Run, run_id)
        if run is None or run.state in TERMINAL_STATES:
            return
        run.state = "running"
        run.flower_run_id = str(flower_run_id)
        session.add(run)


def mark_ended(
    db: Database,
    run_id: str,
    *,
    state: str,
    failure: str | None = None,
    checkpoint: Path | None = None,
    actor: Actor = SYSTEM,
) -> None:
    """A run ended (finished, failed, stopped); an already ended run is left as it is."""
    with db.write() as session:
        run = session.get(Run, run_id)
        if run is None or run.state in TERMINAL_STATES:
            return
        run.state = state
        run.failure = failure
        run.finished_at = now_iso()
        if checkpoint is not None and checkpoint.is_file():
            run.checkpoint_path = str(checkpoint)
        session.add(run)
        details: dict[str, Any] = {"state": state, "rounds_completed": run.rounds_completed}
        if failure:
            details["failure"] = failure[:2000]
        audit.append_event(session, actor, f"run.{state}", f"run:{run_id}", details)


def stop_run(db: Database, actor: Actor, run_id: str, *, launcher: RunLauncher | None) -> Run:
    """Stop an active run (Flower's `flwr stop`); return the run in its final state.

    Stopping is idempotent: a run that has already ended is returned as it is, and a run the
    SuperLink has already ended (its ServerApp failed or died) is recorded with the
    SuperLink's reason (`coordinator.services.reconcile`) instead of failing the request."""
    require_writer(actor, action="stop runs")
    require_role(actor, "platform_admin", action="stop runs")
    run = get_run(db, actor, run_id)
    if run.state not in ACTIVE_STATES:
        return run
    if run.flower_run_id is not None:
        if launcher is None:
            raise no_superlink()
        try:
            launcher.stop(int(run.flower_run_id))
        except ServiceError:
            from coordinator.services.reconcile import reconcile_runs

            reconcile_runs(db, launcher, at_start=False)
            ended = get_run(db, actor, run_id)
            if ended.state in ACTIVE_STATES:
                raise  # the SuperLink still runs it and refused to stop it
            return ended
    mark_ended(db, run_id, state="stopped", failure="stopped by an admin", actor=actor)
    return get_run(db, actor, run_id)


def _visible(actor: Actor, run: Run) -> bool:
    """Everyone's for the platform-wide view; a tenant-scoped key's if its nodes take part."""
    mine = own_members(actor, run)
    return mine is None or bool(mine)


def own_members(actor: Actor, run: Run) -> set[str] | None:
    """The node ids of the run a tenant-scoped key may see by name (its tenant's); None for
    the platform-wide view. Other members are shown to it only as counts."""
    scope = scope_tenant(actor)
    if scope is None:
        return None
    return {m["node_id"] for m in json.loads(run.members) if m.get("tenant_id") == scope}


def failure_as_seen(run: Run, mine: set[str] | None) -> str | None:
    """The run's failure for a reader who may see only the members in `mine` (None: all):
    another tenant's member named in the free text (its name, admin id or Flower node id)
    becomes "another member"."""
    if run.failure is None or mine is None:
        return run.failure
    text = run.failure
    hidden = [m for m in json.loads(run.members) if m.get("node_id") not in mine]
    tokens = {str(m.get(k)) for m in hidden for k in ("name", "node_id", "flower_node_id")}
    for token in sorted((t for t in tokens if t and t != "None"), key=len, reverse=True):
        text = re.sub(rf"(?<![\w-]){re.escape(token)}(?![\w-])", "another member", text)
    return text


def get_run(db: Database, actor: Actor, run_id: str) -> Run:
    """A run; its end is taken from the journal if the ServerApp could not record it."""
    run = db.fetch(Run, run_id) if looks_like_id(run_id) else None
    if run is None or not _visible(actor, run):
        raise not_found("run", run_id)
    if run.state in ACTIVE_STATES and _journal_ended(Path(run.journal_path)):
        # The run ended before the journal follower's next pass: record the whole journal
        # now (rounds, evaluation charges, the end), in order; every record is idempotent.
        from coordinator.services.round_sink import follow_journal

        with contextlib.suppress(IntegrityError):  # the follower recorded it meanwhile
            follow_journal(db, run_id, Path(run.journal_path), 0)
        with db.read() as session:
            refreshed = session.get(Run, run_id)
            assert refreshed is not None
            run = refreshed
    return run


def _journal_ended(journal: Path) -> bool:
    """Whether the run's journal says it ended (a line that is not an event is skipped
    here: the follower, `round_sink.follow_journal`, logs it)."""
    return read_journal(journal, on_error=lambda err: None).finished


def list_runs(db: Database, actor: Actor, *, federation_id: str | None = None) -> list[Run]:
    """Runs the actor may see, newest first."""
    with db.read() as session:
        query = select(Run).order_by(col(Run.created_at).desc())
        if federation_id is not None:
            query = query.where(Run.federation_id == federation_id)
        runs = list(session.exec(query).all())
    return [r for r in runs if _visible(actor, r)]


def run_rounds(db: Database, actor: Actor, run_id: str) -> list[RunRound]:
    """Per-round participants and metrics."""
    get_run(db, actor, run_id)
    with db.read() as session:
        return list(
            session.exec(
                select(RunRound).where(RunRound.run_id == run_id).order_by(col(RunRound.round))
            ).all()
        )
