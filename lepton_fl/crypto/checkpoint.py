"""Signed checkpoints of the coordinator's audit log (its "signed tree heads").

The audit log is a hash chain: row ``n``'s hash covers its content and row ``n - 1``'s
hash, so the hash of row ``n`` commits to rows ``1..n``. A checkpoint is the coordinator's
Ed25519 signature over ``(seq, head_hash, at)``: "my log's row ``seq`` has hash
``head_hash``". Whoever keeps a checkpoint (a node, an auditor, a release manifest, a
privacy report) can later hold the log to it:

* the log ends before ``seq``: rows were cut off (truncation);
* row ``seq`` has another hash: some row at or before ``seq`` was changed, removed or
  inserted, even if every later hash was recomputed (a rewrite);
* two signed checkpoints name the same ``seq`` with different heads, or a later
  checkpoint's log does not extend an earlier one: the coordinator showed two logs.

What a checkpoint cannot prove: that an action was logged at all, or anything about rows
after the newest checkpoint a verifier holds. Like Certificate Transparency's signed tree
heads (RFC 9162), it turns a quiet rewrite into a signed contradiction, provided
checkpoints leave the coordinator and are compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lepton_fl.crypto.detached import SignatureError, sign_detached, verify_detached

CHECKPOINT_FORMAT: Final = "lepton-audit-checkpoint/1"
_HASH_RE: Final = re.compile(r"[0-9a-f]{64}")


class CheckpointError(Exception):
    """A checkpoint is malformed or its signature does not verify (``code`` is stable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, order=True)
class Checkpoint:
    """The coordinator's claim: its audit log's row ``seq`` has hash ``head_hash``."""

    seq: int
    head_hash: str
    at: str

    def body(self) -> dict[str, Any]:
        """What is signed."""
        return {
            "format": CHECKPOINT_FORMAT,
            "seq": self.seq,
            "head_hash": self.head_hash,
            "at": self.at,
        }


def sign_checkpoint(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> dict[str, Any]:
    """``{"checkpoint": {...}, "signature": {...}}``, signed with the coordinator's key."""
    body = checkpoint.body()
    return {"checkpoint": body, "signature": sign_detached(CHECKPOINT_FORMAT, body, key)}


def parse_checkpoint(body: object) -> Checkpoint:
    """The checkpoint in ``body`` (unsigned), or ``checkpoint-malformed``."""
    if not isinstance(body, Mapping) or body.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            "checkpoint-malformed",
            f'a checkpoint must be an object with "format": "{CHECKPOINT_FORMAT}"',
        )
    seq, head, at = body.get("seq"), body.get("head_hash"), body.get("at")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise CheckpointError("checkpoint-malformed", f"checkpoint seq {seq!r} is not a row")
    if not isinstance(head, str) or _HASH_RE.fullmatch(head) is None:
        raise CheckpointError(
            "checkpoint-malformed", "checkpoint head_hash must be 64 lower-case hex digits"
        )
    if not isinstance(at, str):
        raise CheckpointError("checkpoint-malformed", "checkpoint 'at' must be a time string")
    return Checkpoint(seq=seq, head_hash=head, at=at)


def verify_checkpoint(signed: object, public_key: str) -> Checkpoint:
    """The checkpoint of ``signed`` if the trusted coordinator key signed it."""
    if not isinstance(signed, Mapping) or set(signed) != {"checkpoint", "signature"}:
        raise CheckpointError(
            "checkpoint-malformed",
            'a signed checkpoint is {"checkpoint": {...}, "signature": {...}}',
        )
    checkpoint = parse_checkpoint(signed["checkpoint"])
    try:
        verify_detached(CHECKPOINT_FORMAT, signed["checkpoint"], signed["signature"], public_key)
    except SignatureError as err:
        raise CheckpointError(
            "checkpoint-bad-signature", f"checkpoint of row {checkpoint.seq}: {err.message}"
        ) from err
    return checkpoint


def chain_problems(
    checkpoints: Sequence[Checkpoint], last_seq: int, hash_at: Callable[[int], str | None]
) -> list[str]:
    """What the held ``checkpoints`` say about a log whose last row is ``last_seq``
    (``hash_at(seq)`` gives a row's stored hash). Empty: the log is consistent with all."""
    problems: list[str] = []
    seen: dict[int, Checkpoint] = {}
    for checkpoint in sorted(set(checkpoints)):
        earlier = seen.get(checkpoint.seq)
        if earlier is not None and earlier.head_hash != checkpoint.head_hash:
            problems.append(
                f"Two checkpoints signed for row {checkpoint.seq} name different heads "
                f"({earlier.at} and {checkpoint.at}): the coordinator signed two logs."
            )
            continue
        seen[checkpoint.seq] = checkpoint
        if checkpoint.seq > last_seq:
            problems.append(
                f"The checkpoint signed at {checkpoint.at} names row {checkpoint.seq}, but the "
                f"log ends at row {last_seq}: rows were removed from its end."
            )
        elif hash_at(checkpoint.seq) != checkpoint.head_hash:
            problems.append(
                f"Row {checkpoint.seq} does not have the hash the checkpoint signed at "
                f"{checkpoint.at} names: the log up to row {checkpoint.seq} was rewritten."
            )
    return problems


def contradiction(kept: Sequence[Checkpoint], new: Checkpoint) -> tuple[str, str] | None:
    """``(code, sentence)`` if ``new`` contradicts a checkpoint already kept, else None.

    Without the log's rows a holder can check two things: the same row signed with two
    heads (``audit_log_forked``), and a head that went back to an earlier row than one
    already signed (``audit_log_cut``). That a later head extends an earlier one needs the
    rows in between: an auditor checks it (POST /audit/verification with kept checkpoints).
    """
    for old in kept:
        if old.seq == new.seq and old.head_hash != new.head_hash:
            return (
                "audit_log_forked",
                f"The coordinator signed two different audit logs: row {new.seq} had head "
                f"{old.head_hash[:16]}… (signed {old.at}) and now has {new.head_hash[:16]}… "
                f"(signed {new.at}). Its log was rewritten.",
            )
    latest = max(kept, default=None)
    if latest is not None and new.seq < latest.seq:
        return (
            "audit_log_cut",
            f"The coordinator's audit log went back from row {latest.seq} (signed "
            f"{latest.at}) to row {new.seq}: rows were removed, or its database was restored "
            "from an older copy.",
        )
    return None
