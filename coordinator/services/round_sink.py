"""The ServerApp's link to the admin database: a run journal that also records in it.

`open_journal(run)` is what the ServerApp calls: for a run started through the admin API
(its `RunSpec` names the admin database and run), every journal event is also written
through the services: `round` records the round, each node's charge and an audit event in
one transaction; `run_started`, `run_finished` and `run_failed` move the run's state. The
journal line is written first, so a database outage never loses a round's record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from coordinator.db import Database
from coordinator.fl.journal import RunJournal
from coordinator.services import ledger, runs
from lepton_fl.config import RunSpec

log = logging.getLogger(__name__)


class LedgerJournal(RunJournal):
    """A run journal that also records rounds and the run's state in the admin database."""

    def __init__(self, path: Path, *, db: Database, run_id: str) -> None:
        super().__init__(path)
        self.db = db
        self.run_id = run_id

    def write(self, event: str, **fields: Any) -> None:
        super().write(event, **fields)
        if event == "run_started":
            runs.mark_started(self.db, self.run_id, flower_run_id=int(fields["flower_run_id"]))
        elif event == "round":
            ledger.record_round(self.db, self.run_id, fields)
        elif event == "run_finished":
            runs.mark_ended(
                self.db,
                self.run_id,
                state="finished",
                checkpoint=self.path.with_name("checkpoint.npz"),
            )
        elif event == "run_failed":
            try:
                runs.mark_ended(
                    self.db, self.run_id, state="failed", failure=str(fields.get("reason"))
                )
            except Exception:  # the run already failed; do not hide why
                log.exception("Could not record the failure of run %s", self.run_id)


def open_journal(run: RunSpec) -> RunJournal:
    """The journal for `run`: recording in the admin database when the run came from it."""
    path = Path(run.journal_path)
    if run.admin_database_url is None or run.admin_run_id is None:
        return RunJournal(path)
    return LedgerJournal(
        path, db=Database(run.admin_database_url, pooled=False), run_id=run.admin_run_id
    )
