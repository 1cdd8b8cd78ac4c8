"""The node keeps every audit-log checkpoint the coordinator shows it.

Each run's signed authorization carries the coordinator's newest signed checkpoint of its
audit log (`lepton_fl.crypto.checkpoint`). The node verifies it with the pinned coordinator
key and appends it to ``<state_dir>/audit-checkpoints.jsonl``. A checkpoint that
contradicts one already kept (the same row with another head: the log was rewritten; an
earlier row than one already signed: the log was cut or restored) makes the node refuse
the run: an operator who rewrote the audit log gets no more training from this site
until someone looks. The file is the site's own evidence: its IT can send the checkpoints
to ``POST /api/v1/audit/verification`` or hand them to an auditor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lepton_fl.crypto.checkpoint import (
    Checkpoint,
    CheckpointError,
    contradiction,
    parse_checkpoint,
    verify_checkpoint,
)

FILE_NAME = "audit-checkpoints.jsonl"


class CheckpointRefusal(Exception):
    """The run's checkpoint is invalid or contradicts one this node kept."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CheckpointStore:
    """The checkpoints a node has seen, one signed JSON per line."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._kept: list[Checkpoint] | None = None

    def kept(self) -> list[Checkpoint]:
        """Every checkpoint kept so far (read once; the file is only appended to)."""
        if self._kept is None:
            self._kept = []
            if self.path.exists():
                for number, line in enumerate(self.path.read_text("utf-8").splitlines(), 1):
                    try:
                        self._kept.append(parse_checkpoint(json.loads(line)["checkpoint"]))
                    except (ValueError, KeyError, TypeError, CheckpointError) as err:
                        raise CheckpointRefusal(
                            "audit_checkpoints_damaged",
                            f"Line {number} of {self.path} is not a checkpoint ({err}); the "
                            "file was altered. Restore it from a backup; the node refuses "
                            "runs until then.",
                        ) from err
        return self._kept

    def observe(self, signed: dict[str, Any], public_key_pem: str) -> Checkpoint:
        """Verify ``signed``, refuse it if it contradicts a kept checkpoint, keep it."""
        try:
            checkpoint = verify_checkpoint(signed, public_key_pem)
        except CheckpointError as err:
            raise CheckpointRefusal(
                "audit_checkpoint_invalid",
                f"The run's audit checkpoint is not one the pinned coordinator key signed "
                f"({err.message}); this node refuses the run.",
            ) from err
        kept = self.kept()
        found = contradiction(kept, checkpoint)
        if found is not None:
            code, sentence = found
            raise CheckpointRefusal(
                code,
                f"{sentence} This node refuses the run; the evidence is in {self.path}. Ask "
                "the platform's auditor to check the log against it (POST "
                "/api/v1/audit/verification).",
            )
        if checkpoint not in kept:
            line = json.dumps(signed, sort_keys=True, separators=(",", ":")) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            kept.append(checkpoint)
        return checkpoint
