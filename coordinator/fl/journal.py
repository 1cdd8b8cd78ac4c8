"""The run journal: an append-only JSON-lines record of a run, written by the ServerApp.

Each line is one event (`run_started`, `round_started`, `round`, `evaluation`,
`run_finished`, `run_failed`). Lines are flushed and fsynced as they are written, so a
reader (the demo's progress display, an operator's `tail -f`) sees every completed round
and a crash never loses one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RunJournal:
    """Appends events to one run's journal file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        """Append one event, durably."""
        line = json.dumps({"event": event, "time": time.time(), **fields}, sort_keys=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


@dataclass
class JournalView:
    """What a reader has seen of a journal so far."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def of(self, event: str) -> list[dict[str, Any]]:
        """All events of one type, in order."""
        return [e for e in self.events if e["event"] == event]

    @property
    def finished(self) -> bool:
        """True once the run has ended, well or not."""
        return any(e["event"] in ("run_finished", "run_failed") for e in self.events)

    @property
    def failure(self) -> str | None:
        """The reason a run failed, if it did."""
        failed = self.of("run_failed")
        return str(failed[-1]["reason"]) if failed else None


def read_journal(path: Path) -> JournalView:
    """Read every complete line of a journal (a partially written last line is skipped)."""
    view = JournalView()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return view
    for line in text.splitlines():
        try:
            view.events.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return view
