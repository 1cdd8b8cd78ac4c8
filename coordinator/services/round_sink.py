"""The admin service's reader of run journals: rounds, charges and run states into the DB.

The ServerApp holds no database credentials (it runs in a process with nothing of the
coordinator's, see `coordinator.fl.launcher`): it only appends to its run's journal
(`coordinator.fl.journal`). The admin service reads the journals of its active runs
(`JournalFollower`, a thread of `lepton coordinator start`) and records each typed event
through the services (`apply_event`): a `RoundRecord` records the round, each node's charge
and an audit event in one transaction, an `EvaluationRecord` the evaluation's DP charges;
`RunStarted` and `RunEnded` move the run's state. Every
record is idempotent (a round is recorded once, an ended run stays ended), so a coordinator
restarted mid-run reads the journal again from its start and loses nothing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import assert_never

from sqlmodel import col, select

from coordinator.db import Database
from coordinator.db.tables import Run
from coordinator.fl.journal import (
    EvaluationRecord,
    JournalError,
    JournalEvent,
    RoundRecord,
    RoundStarted,
    RunEnded,
    RunJournal,
    RunStarted,
    read_events,
)
from coordinator.services import ledger, runs

log = logging.getLogger(__name__)

FOLLOW_INTERVAL_S = 0.25


def apply_event(db: Database, run_id: str, event: JournalEvent, *, journal: Path) -> None:
    """Record one journal event of run `run_id` in the admin database (idempotent)."""
    match event:
        case RunStarted():
            runs.mark_started(db, run_id, flower_run_id=event.flower_run_id)
        case RoundStarted():
            pass  # progress for the journal's readers; the round is recorded when it ends
        case RoundRecord():
            ledger.record_round(db, run_id, event)
        case EvaluationRecord():
            ledger.record_evaluation(db, run_id, event)
        case RunEnded(state="finished"):
            runs.mark_ended(
                db, run_id, state="finished", checkpoint=journal.with_name("checkpoint.npz")
            )
        case RunEnded():
            runs.mark_ended(db, run_id, state="failed", failure=event.failure)
        case _:
            assert_never(event)


class LedgerJournal(RunJournal):
    """A journal that records each event at once (an in-process ServerApp, in tests)."""

    def __init__(self, path: Path, *, db: Database, run_id: str) -> None:
        super().__init__(path)
        self.db = db
        self.run_id = run_id

    def append(self, event: JournalEvent) -> None:
        super().append(event)
        apply_event(self.db, self.run_id, event, journal=self.path)


def follow_journal(db: Database, run_id: str, path: Path, offset: int) -> int:
    """Apply the complete lines of `path` after byte `offset`; return the new offset.

    A line that is not a journal event is logged and skipped: the rest of the run still
    reaches the database."""

    def skip(err: JournalError) -> None:
        log.error("run %s: an unreadable journal line was skipped: %s", run_id, err)

    events, end = read_events(path, offset, on_error=skip)
    for event in events:
        apply_event(db, run_id, event, journal=path)
    return end


class JournalFollower:
    """Reads the journals of active runs into the admin database, in a thread."""

    def __init__(self, db: Database, *, interval_s: float = FOLLOW_INTERVAL_S) -> None:
        self.db = db
        self.interval_s = interval_s
        self._offsets: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start following."""
        self._thread = threading.Thread(target=self._run, name="journal-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following (after one last pass)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def poll(self) -> None:
        """One pass over the active runs' journals."""
        with self.db.read() as session:
            active = session.exec(
                select(Run.id, Run.journal_path).where(col(Run.state).in_(runs.ACTIVE_STATES))
            ).all()
        for run_id, journal in active:
            offset = self._offsets.get(run_id, 0)
            self._offsets[run_id] = follow_journal(self.db, run_id, Path(journal), offset)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # a database hiccup: the next pass tries again
                log.exception("reading run journals failed")
        self.poll()
