"""Run state has one source of truth: the admin database's active runs follow the SuperLink.

A run's end normally reaches the database through its journal (`round_sink`): the ServerApp
writes `RunEnded`. When no ServerApp is left to write it, the run would stay "running"
forever and block its federation. `reconcile_runs` settles every active run against what
the SuperLink says (`RunLauncher.statuses`), at every coordinator start and then every
`RECONCILE_INTERVAL_S` (`RunReconciler`, a thread of `lepton coordinator start`):

* the SuperLink **finished** the run (its ServerApp failed, was refused, lost its heartbeat,
  or was stopped) and the journal has no end: the run fails with the SuperLink's status and
  details;
* the SuperLink **does not know** the run (its state was reset, or the coordinator stopped
  between recording the run and submitting it): the run fails, saying so;
* **at a coordinator start**, every active run was interrupted: the SuperLink keeps its
  state in memory (`coordinator.superlink`), so a new coordinator process starts with an
  empty one that knows none of them, and their ServerApps died with the previous process
  (the launcher starts them with ``die_with_parent``). They fail as *interrupted by a
  coordinator restart*. (A SuperLink that still lists such a run as starting or running,
  one started on another state backend, is asked to stop it first.)

An interrupted run ends; it does not resume. Nodes bind each signed run authorization to
the first Flower run that presents it (the node ledger's ``run_bindings``, the defence
against a replayed run), so resuming would need a new Flower run and a new authorization:
that is a new run, which the admin starts (the federation is free again at once). Nothing
is lost: every round recorded stays in the ledger, each node charged each (run, round) at
most once, and the last completed round's model stays in the run's ``checkpoint.npz``.

Each end is written as the journal's `RunEnded` (so journal readers see it) and recorded
from there, idempotently, like any other end.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import col, select

from coordinator.db import Database
from coordinator.db.tables import Run
from coordinator.fl.journal import RunEnded, RunJournal, read_journal
from coordinator.services import runs
from coordinator.services.errors import ServiceError
from coordinator.services.gateway import RunLauncher
from coordinator.services.round_sink import follow_journal
from coordinator.superlink import FlowerRunStatus

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_S = 10.0
RECONCILED_KIND = "Reconciled"
"""The `RunEnded.kind` of an end the reconciler wrote (the ServerApp writes error types)."""


@dataclass(frozen=True)
class Settled:
    """A run the reconciler ended, and why."""

    run_id: str
    reason: str


def reconcile_runs(db: Database, launcher: RunLauncher, *, at_start: bool) -> list[Settled]:
    """Settle every active run against the SuperLink; return the runs ended.

    ``at_start``: this coordinator process has just started, so no ServerApp of its own
    drives any run yet. Raises `ServiceError` when the SuperLink cannot be asked (the next
    pass tries again)."""
    with db.read() as session:
        active = list(session.exec(select(Run).where(col(Run.state).in_(runs.ACTIVE_STATES))))
    if not active:
        return []
    statuses = launcher.statuses()
    settled = []
    for run in active:
        flower_id = int(run.flower_run_id) if run.flower_run_id is not None else None
        status = statuses.get(flower_id) if flower_id is not None else None
        reason = _end_reason(run, flower_id, status, at_start=at_start)
        if reason is None:
            continue
        if at_start and status is not None and not status.finished and flower_id is not None:
            _stop_quietly(launcher, flower_id)
        if end_run(db, run.id, reason):
            log.warning("run %s ended by reconciliation: %s", run.id, reason)
            settled.append(Settled(run.id, reason))
    return settled


def _end_reason(
    run: Run, flower_id: int | None, status: FlowerRunStatus | None, *, at_start: bool
) -> str | None:
    """Why `run` must end now, or ``None`` if it may go on."""
    if flower_id is None:
        if not at_start:
            return None  # its submission may be under way in this process
        return (
            "The coordinator stopped after recording the run and before the SuperLink "
            "accepted it; nothing was sent to any node. Start a new run."
        )
    if status is None and at_start:
        # the SuperLink keeps its state in memory: a restart forgets every run it held
        return _interrupted(run, flower_id)
    if status is None:
        return (
            f"The SuperLink has no record of Flower run {flower_id} (it keeps its state in "
            "memory: was it restarted?); no node can take part in it any more. Start a new "
            "run."
        )
    if status.finished:
        return (
            f"The SuperLink ended Flower run {flower_id} ({status.describe()}) before its "
            "ServerApp recorded an end; see the coordinator's serverapp log for the run."
        )
    if at_start and status.status in ("starting", "running"):
        return _interrupted(run, flower_id)
    return None


def _interrupted(run: Run, flower_id: int) -> str:
    return (
        f"Interrupted by a coordinator restart: the ServerApp driving Flower run "
        f"{flower_id} ended with the previous coordinator process, after "
        f"{run.rounds_completed} of {run.rounds_planned} rounds. Recorded rounds and "
        "charges are kept, and the last completed round's model is in the run's "
        "checkpoint.npz. Start a new run of the federation to go on."
    )


def end_run(db: Database, run_id: str, reason: str) -> bool:
    """End an active run as failed with ``reason``: the journal gets its `RunEnded` (unless
    it ended meanwhile), and the whole journal is recorded. Returns whether this ended it."""
    run = db.fetch(Run, run_id)
    if run is None or run.state not in runs.ACTIVE_STATES:
        return False
    journal = Path(run.journal_path)
    follow_journal(db, run_id, journal, 0)  # rounds and an end written meanwhile come first
    if _ended(db, run_id) or read_journal(journal, on_error=lambda err: None).finished:
        return False
    refreshed = db.fetch(Run, run_id)
    rounds = refreshed.rounds_completed if refreshed is not None else 0
    RunJournal(journal).append(
        RunEnded(state="failed", rounds_completed=rounds, reason=reason, kind=RECONCILED_KIND)
    )
    follow_journal(db, run_id, journal, 0)
    if not _ended(db, run_id):  # a journal line the follower could not read
        runs.mark_ended(db, run_id, state="failed", failure=reason)
    return True


def _ended(db: Database, run_id: str) -> bool:
    run = db.fetch(Run, run_id)
    return run is None or run.state not in runs.ACTIVE_STATES


def _stop_quietly(launcher: RunLauncher, flower_id: int) -> None:
    """Ask the SuperLink to stop a run no ServerApp drives any more (it may have ended)."""
    try:
        launcher.stop(flower_id)
    except ServiceError as err:
        log.info("Flower run %s: stop not needed or refused: %s", flower_id, err.message)


class RunReconciler:
    """`reconcile_runs` every `RECONCILE_INTERVAL_S`, in a thread."""

    def __init__(
        self,
        db: Database,
        launcher: RunLauncher,
        *,
        interval_s: float = RECONCILE_INTERVAL_S,
    ) -> None:
        self.db = db
        self.launcher = launcher
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start reconciling."""
        self._thread = threading.Thread(target=self._run, name="run-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reconciling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                reconcile_runs(self.db, self.launcher, at_start=False)
            except ServiceError as err:
                log.warning("could not reconcile runs with the SuperLink: %s", err.message)
            except Exception:  # a database hiccup: the next pass tries again
                log.exception("reconciling runs failed")
