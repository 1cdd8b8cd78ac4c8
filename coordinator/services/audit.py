"""The append-only, hash-chained audit log.

Each row's hash is SHA-256 over the canonical JSON of the row (seq, at, actor, action,
target, details) followed by the previous row's hash; the first row's previous hash is 64
zeros. Changing any stored field of any row breaks its own hash, and deleting or inserting
a row breaks the next row's link: `verify_chain` names the first broken row. The services
offer no update or delete; the migration adds database triggers that refuse both.

A chain alone cannot show that its last rows were cut off, or that it was rewritten with
every hash recomputed. So every write transaction that appends events also stores a
checkpoint: the coordinator's Ed25519 signature over the new head (row, hash, time; see
`lepton_fl.crypto.checkpoint`). Checkpoints leave the coordinator in release manifests,
privacy reports, run authorizations and `GET /audit/checkpoints`; `verify_chain` holds the
log to the stored ones and to any a node or auditor kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import ColumnElement, or_, text
from sqlmodel import Session, col, select

from coordinator.db import Database
from coordinator.db.engine import Record, driver_sql
from coordinator.db.tables import ApiKey, AuditCheckpoint, AuditEvent
from coordinator.services.common import (
    Actor,
    canonical_json,
    now_iso,
    require_role,
    scope_tenant,
)
from lepton_fl.crypto.checkpoint import (
    Checkpoint,
    CheckpointError,
    chain_problems,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)

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
    session.info[_HEAD] = (seq, fields["hash"])
    return cast(AuditEvent, event)


@dataclass(frozen=True)
class ChainVerdict:
    """The result of checking the whole chain."""

    ok: bool
    events_checked: int
    first_broken_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None
    checkpoints_checked: int = 0
    latest_checkpoint: dict[str, Any] | None = None


def verify_chain(
    db: Database,
    actor: Actor,
    *,
    public_key: str | None = None,
    held: Sequence[Checkpoint] = (),
) -> ChainVerdict:
    """Recompute every hash and link in order; name the first row that does not match.
    Then hold the log to every checkpoint: the coordinator's own (each signature checked
    with `public_key`) and those a node or auditor kept (`held`, already verified)."""
    require_role(actor, "platform_admin", "auditor", action="verify the audit log")
    with db.read() as session:
        rows = list(session.exec(select(AuditCheckpoint).order_by(col(AuditCheckpoint.seq))).all())
    verdict, heads = _verify_links(db, {c.seq for c in held} | {r.seq for r in rows})
    if not verdict.ok:
        return verdict
    stored, problems = _stored_checkpoints(rows, public_key)
    checkpoints = [*stored, *held]
    problems += chain_problems(checkpoints, verdict.events_checked, heads.get)
    latest = cast(dict[str, Any], json.loads(rows[-1].signed)) if rows else None
    if problems:
        return replace(
            verdict,
            ok=False,
            reason=" ".join(problems),
            checkpoints_checked=len(checkpoints),
            latest_checkpoint=latest,
        )
    return replace(verdict, checkpoints_checked=len(checkpoints), latest_checkpoint=latest)


def _verify_links(db: Database, keep: set[int]) -> tuple[ChainVerdict, dict[int, str]]:
    """Check every row's hash and link; return the hashes of the rows in `keep`."""
    heads: dict[int, str] = {}
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
                    return ChainVerdict(False, checked, row.seq, problem, prev_hash), heads
                checked += 1
                prev_hash = row.hash
                expected_seq = row.seq + 1
                after = row.seq
                if row.seq in keep:
                    heads[row.seq] = row.hash
    return ChainVerdict(True, checked, head_hash=prev_hash if checked else None), heads


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
    """Events in order, after sequence number `after`. A tenant auditor gets only the events
    about its tenant (`_TenantView`), with other tenants' nodes only counted."""
    require_role(actor, "platform_admin", "auditor", action="read the audit log")
    view = _TenantView.of(db, actor)
    events: list[AuditEvent] = []
    with db.read() as session:
        while len(events) < limit:
            query = select(AuditEvent).where(col(AuditEvent.seq) > after)
            if action is not None:
                query = query.where(AuditEvent.action == action)
            if view is not None:
                query = query.where(view.condition())
            rows = session.exec(query.order_by(col(AuditEvent.seq)).limit(limit)).all()
            if view is None:
                return list(rows)
            events += [shown for row in rows if (shown := view.show(row)) is not None]
            if len(rows) < limit:
                break
            after = rows[-1].seq
    return events[:limit]


#: Details that list node ids, and that map node ids to values: a tenant auditor sees its
#: own tenant's entries, and how many others there were.
_NODE_LISTS = ("members", "participants", "charged_not_aggregated", "nodes_revoked")
_NODE_MAPS = ("epsilon_reported", "node_ids")


@dataclass(frozen=True)
class _TenantView:
    """What a tenant auditor may read of the log: events whose target is its tenant, one of
    its nodes or API keys, a run or release it may read (`runs.list_runs`,
    `releases.list_releases`: the same rules as those routes), or a federation membership of
    one of its nodes; and any event whose details carry its tenant_id. An event whose details
    name another tenant_id (a key, node or release grant of another tenant) is not shown."""

    tenant_id: str
    nodes: frozenset[str]
    targets: frozenset[str]

    @classmethod
    def of(cls, db: Database, actor: Actor) -> _TenantView | None:
        from coordinator.services import nodes, releases, runs  # they import this module

        tenant_id = scope_tenant(actor)
        if tenant_id is None:
            return None
        node_ids = {n.id for n in nodes.list_nodes(db, actor)}
        with db.read() as session:
            keys = session.exec(select(ApiKey.id).where(ApiKey.tenant_id == tenant_id)).all()
        targets = {f"tenant:{tenant_id}"}
        targets |= {f"node:{n}" for n in node_ids} | {f"api_key:{k}" for k in keys}
        targets |= {f"run:{r.id}" for r in runs.list_runs(db, actor)}
        targets |= {f"release:{r.id}" for r in releases.list_releases(db, actor)}
        return cls(tenant_id, frozenset(node_ids), frozenset(targets))

    def condition(self) -> ColumnElement[bool]:
        """A first cut in SQL; `show` decides."""
        return or_(
            col(AuditEvent.target).in_(self.targets),
            col(AuditEvent.target).startswith("federation:"),
            col(AuditEvent.details).contains(f'"tenant_id":"{self.tenant_id}"', autoescape=True),
        )

    def show(self, row: AuditEvent) -> AuditEvent | None:
        """The event as the tenant auditor sees it, or None if it is not about its tenant."""
        details = json.loads(row.details)
        if not isinstance(details, dict):
            return None
        if details.get("tenant_id") is not None:
            if details["tenant_id"] != self.tenant_id:
                return None
        elif row.target.startswith("federation:"):
            named = {details.get("node_id"), *details.get("members", [])}
            if not named & self.nodes:
                return None
        elif row.target not in self.targets:
            return None
        redacted = self._redact(details)
        if redacted == details:
            return row
        fields = {name: getattr(row, name) for name in AuditEvent.model_fields}
        return AuditEvent(**(fields | {"details": canonical_json(redacted)}))

    def _redact(self, details: dict[str, Any]) -> dict[str, Any]:
        """Other tenants' nodes (and release grants) only as counts. The result no longer
        matches the row's hash, so it says `redacted`."""
        out = dict(details)
        for key, value in details.items():
            if key in _NODE_LISTS and isinstance(value, list):
                out[key] = [n for n in value if n in self.nodes]
            elif key in _NODE_MAPS and isinstance(value, dict):
                out[key] = {n: v for n, v in value.items() if n in self.nodes}
            elif key == "grants" and isinstance(value, list):
                out[key] = [t for t in value if t == self.tenant_id]
            else:
                continue
            if len(out[key]) < len(value):
                out[f"other_{key}"] = len(value) - len(out[key])
                out["redacted"] = True
        return out


# -- signed checkpoints ----------------------------------------------------------------

_HEAD = "lepton_audit_head"  # session.info: (seq, hash) of the last event appended


class Checkpointer:
    """Signs a checkpoint of the chain's head in every write transaction that appended
    audit events (a `Database.before_commit` hook): every state change leaves one."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def __call__(self, session: Session) -> None:
        head = session.info.pop(_HEAD, None)
        if head is not None:
            _write_checkpoint(session, self._key, *head)


def enable_checkpoints(db: Database, key: Ed25519PrivateKey) -> None:
    """Sign checkpoints from now on, and one now if events were appended without the key
    (by `lepton coordinator create-admin-key`, for example) since the last one."""
    db.before_commit[:] = [h for h in db.before_commit if not isinstance(h, Checkpointer)]
    db.before_commit.append(Checkpointer(key))
    with db.write() as session:
        cursor = driver_sql(session, _LAST_EVENT, {})
        last = cursor.fetchone()
        cursor.close()
        if last is not None and session.get(AuditCheckpoint, int(last[0])) is None:
            _write_checkpoint(session, key, int(last[0]), str(last[1]))


def _write_checkpoint(session: Session, key: Ed25519PrivateKey, seq: int, head: str) -> None:
    at = now_iso()
    signed = sign_checkpoint(Checkpoint(seq=seq, head_hash=head, at=at), key)
    session.add(AuditCheckpoint(seq=seq, head_hash=head, at=at, signed=canonical_json(signed)))


def latest_checkpoint(db: Database, actor: Actor) -> dict[str, Any] | None:
    """The newest signed checkpoint, as the coordinator signed it (None: empty log)."""
    require_role(actor, "platform_admin", "tenant_admin", "auditor", action="read checkpoints")
    return _latest_signed(db)


def list_checkpoints(
    db: Database, actor: Actor, *, after: int = 0, limit: int = 100
) -> list[dict[str, Any]]:
    """Signed checkpoints in order of the row they name, after row `after`."""
    require_role(actor, "platform_admin", "tenant_admin", "auditor", action="read checkpoints")
    with db.read() as session:
        rows = session.exec(
            select(AuditCheckpoint)
            .where(col(AuditCheckpoint.seq) > after)
            .order_by(col(AuditCheckpoint.seq))
            .limit(limit)
        ).all()
    return [json.loads(r.signed) for r in rows]


def _latest_signed(db: Database) -> dict[str, Any] | None:
    with db.read() as session:
        return latest_signed(session)


def latest_signed(session: Session) -> dict[str, Any] | None:
    """The newest signed checkpoint seen by `session` (what a release or report carries)."""
    row = session.exec(
        select(AuditCheckpoint).order_by(col(AuditCheckpoint.seq).desc()).limit(1)
    ).first()
    return None if row is None else cast(dict[str, Any], json.loads(row.signed))


def _stored_checkpoints(
    rows: Sequence[AuditCheckpoint], public_key: str | None
) -> tuple[list[Checkpoint], list[str]]:
    """The coordinator's own checkpoints, each signature checked when a key is given."""
    checkpoints: list[Checkpoint] = []
    problems: list[str] = []
    for row in rows:
        try:
            signed = json.loads(row.signed)
            checkpoint = (
                verify_checkpoint(signed, public_key)
                if public_key is not None
                else parse_checkpoint(signed.get("checkpoint"))
            )
        except (CheckpointError, ValueError, AttributeError) as err:
            problems.append(f"The stored checkpoint of row {row.seq} is not valid: {err}.")
            continue
        if (checkpoint.seq, checkpoint.head_hash) != (row.seq, row.head_hash):
            problems.append(f"The stored checkpoint of row {row.seq} was altered.")
            continue
        checkpoints.append(checkpoint)
    return checkpoints, problems
