"""The append-only, hash-chained audit log.

Each row's hash is SHA-256 over the canonical JSON of the row (seq, at, actor, action,
target, details) followed by the previous row's hash; the first row's previous hash is 64
zeros. Changing any stored field of any row breaks its own hash, and deleting or inserting
a row breaks the next row's link: `verify_chain` names the first broken row. The services
offer no update or delete; the migration adds database triggers that refuse both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import text
from sqlmodel import Session, col, select

from coordinator.db import Database
from coordinator.db.engine import Record, driver_sql
from coordinator.db.tables import AuditEvent
from coordinator.services.common import Actor, canonical_json, now_iso, require_role

GENESIS_HASH = "0" * 64
_LAST_EVENT = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
_INSERT_EVENT = (
    "INSERT INTO audit_events (seq, at, actor, action, target, details, prev_hash, hash) "
    "VALUES (:seq, :at, :actor, :action, :target, :details, :prev_hash, :hash)"
)
#: Key of the PostgreSQL advisory lock that serialises appends to the chain.
_APPEND_LOCK = 0x4C4550544F4E  # "LEPTON"
_VERIFY_BATCH = 1000


def event_hash(
    *, seq: int, at: str, actor: str, action: str, target: str, details: str, prev_hash: str
) -> str:
    """The hash of one row, chained to its predecessor's."""
    body = canonical_json(
        {
            "seq": seq,
            "at": at,
            "actor": actor,
            "action": action,
            "target": target,
            "details": json.loads(details),
        }
    )
    return hashlib.sha256(body.encode("utf-8") + prev_hash.encode("ascii")).hexdigest()


def append_event(
    session: Session, actor: Actor, action: str, target: str, details: dict[str, Any]
) -> AuditEvent:
    """Append one event in the caller's transaction (which holds the write lock)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK})
    cursor = driver_sql(session, _LAST_EVENT, {})
    last = cursor.fetchone()
    cursor.close()
    seq = 1 if last is None else int(last[0]) + 1
    prev_hash = GENESIS_HASH if last is None else str(last[1])
    at = now_iso()
    details_json = canonical_json(details)
    fields: dict[str, Any] = {
        "seq": seq,
        "at": at,
        "actor": actor.label,
        "action": action,
        "target": target,
        "details": details_json,
        "prev_hash": prev_hash,
    }
    fields["hash"] = event_hash(**fields)
    event = Record(fields)
    driver_sql(session, _INSERT_EVENT, fields).close()
    return cast(AuditEvent, event)


@dataclass(frozen=True)
class ChainVerdict:
    """The result of checking the whole chain."""

    ok: bool
    events_checked: int
    first_broken_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None


def verify_chain(db: Database, actor: Actor) -> ChainVerdict:
    """Recompute every hash and link in order; name the first row that does not match."""
    require_role(actor, "platform_admin", "auditor", action="verify the audit log")
    checked = 0
    prev_hash = GENESIS_HASH
    expected_seq = 1
    after = 0
    with db.read() as session:
        while True:
            rows = session.exec(
                select(AuditEvent)
                .where(col(AuditEvent.seq) > after)
                .order_by(col(AuditEvent.seq))
                .limit(_VERIFY_BATCH)
            ).all()
            if not rows:
                break
            for row in rows:
                problem = _row_problem(row, expected_seq, prev_hash)
                if problem is not None:
                    return ChainVerdict(False, checked, row.seq, problem, prev_hash)
                checked += 1
                prev_hash = row.hash
                expected_seq = row.seq + 1
                after = row.seq
    return ChainVerdict(True, checked, head_hash=prev_hash if checked else None)


def _row_problem(row: AuditEvent, expected_seq: int, prev_hash: str) -> str | None:
    if row.seq != expected_seq:
        return f"Row {expected_seq} is missing: the chain jumps to row {row.seq}."
    if row.prev_hash != prev_hash:
        return f"Row {row.seq} does not link to row {row.seq - 1}: its previous hash differs."
    try:
        recomputed = event_hash(
            seq=row.seq,
            at=row.at,
            actor=row.actor,
            action=row.action,
            target=row.target,
            details=row.details,
            prev_hash=row.prev_hash,
        )
    except (ValueError, TypeError):
        return f"Row {row.seq} has details that are not valid JSON: it was altered."
    if recomputed != row.hash:
        return f"Row {row.seq} was altered: its content does not match its hash."
    return None


def list_events(
    db: Database, actor: Actor, *, after: int = 0, limit: int = 100, action: str | None = None
) -> list[AuditEvent]:
    """Events in order, after sequence number `after`."""
    require_role(actor, "platform_admin", "auditor", action="read the audit log")
    with db.read() as session:
        query = select(AuditEvent).where(col(AuditEvent.seq) > after)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        return list(session.exec(query.order_by(col(AuditEvent.seq)).limit(limit)).all())
