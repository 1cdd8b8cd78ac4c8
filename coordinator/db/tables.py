"""SQLModel tables of the admin service.

Times are stored as ISO-8601 UTC strings (`2026-11-25T01:02:03.456789Z`), identical on SQLite
and PostgreSQL, so that what the audit chain hashes reads back byte for byte. JSON payloads
that are hashed or signed are stored as canonical JSON text for the same reason.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class Tenant(SQLModel, table=True):
    """An institution (a hospital, a bank): owns nodes and tenant-admin keys."""

    __tablename__ = "tenants"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=63, unique=True)
    display_name: str = Field(default="", max_length=200)
    disabled: bool = False
    created_at: str = Field(max_length=32)
    disabled_at: str | None = Field(default=None, max_length=32)


class ApiKey(SQLModel, table=True):
    """An API key: only its non-secret prefix and a slow (argon2) hash of it are stored."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=36)
    prefix: str = Field(max_length=16, unique=True)
    key_hash: str = Field(max_length=200)
    role: str = Field(max_length=32)
    tenant_id: str | None = Field(default=None, foreign_key="tenants.id", max_length=36)
    name: str = Field(default="", max_length=200)
    created_at: str = Field(max_length=32)
    created_by: str = Field(default="", max_length=100)
    revoked_at: str | None = Field(default=None, max_length=32)


class Node(SQLModel, table=True):
    """A node of a tenant: enrolled with a one-time token and its OpenSSH public key."""

    __tablename__ = "nodes"

    id: str = Field(primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36)
    name: str = Field(max_length=63, unique=True)
    epsilon_budget: float
    state: str = Field(max_length=16)  # pending, enrolled, revoked
    token_hash: str | None = Field(default=None, max_length=64, index=True)
    token_expires_at: str | None = Field(default=None, max_length=32)
    flower_node_id: str | None = Field(default=None, max_length=24)
    public_key: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    public_key_fingerprint: str | None = Field(default=None, max_length=100)
    created_at: str = Field(max_length=32)
    enrolled_at: str | None = Field(default=None, max_length=32)
    revoked_at: str | None = Field(default=None, max_length=32)


class Federation(SQLModel, table=True):
    """A federation: its definition (task, model, privacy policy) as canonical JSON."""

    __tablename__ = "federations"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=63, unique=True)
    definition: str = Field(sa_column=Column(Text, nullable=False))
    digest: str = Field(max_length=64)
    created_at: str = Field(max_length=32)


class FederationMember(SQLModel, table=True):
    """A node's membership of a federation: requested by its tenant, approved by an admin."""

    __tablename__ = "federation_members"

    federation_id: str = Field(foreign_key="federations.id", primary_key=True, max_length=36)
    node_id: str = Field(foreign_key="nodes.id", primary_key=True, max_length=36)
    status: str = Field(max_length=16)  # requested, approved
    created_at: str = Field(max_length=32)


class Run(SQLModel, table=True):
    """One run of a federation on the SuperLink."""

    __tablename__ = "runs"

    id: str = Field(primary_key=True, max_length=36)
    federation_id: str = Field(foreign_key="federations.id", index=True, max_length=36)
    state: str = Field(max_length=16)  # submitted, running, finished, failed, stopped
    flower_run_id: str | None = Field(default=None, max_length=24)
    planned_epsilon: float
    rounds_planned: int
    rounds_completed: int = 0
    members: str = Field(sa_column=Column(Text, nullable=False))  # JSON [{node_id, name, ...}]
    spec: str = Field(sa_column=Column(Text, nullable=False))  # the RunSpec JSON submitted
    journal_path: str = Field(max_length=1000)
    checkpoint_path: str | None = Field(default=None, max_length=1000)
    failure: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: str = Field(max_length=32)
    finished_at: str | None = Field(default=None, max_length=32)


class RunRound(SQLModel, table=True):
    """A completed round: participants and aggregate-safe metrics."""

    __tablename__ = "run_rounds"

    run_id: str = Field(foreign_key="runs.id", primary_key=True, max_length=36)
    round: int = Field(primary_key=True)
    participants: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of node ids
    refusals: str = Field(sa_column=Column(Text, nullable=False))  # JSON {node id: reason}
    # JSON {node id: [status, code]} of every member not in the aggregate (status refused,
    # error or dropped; the stable code of its reply or of the ServerApp); NULL before 0005
    outcomes: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    num_examples: int = 0
    train_loss: float | None = None
    seconds: float | None = None
    recorded_at: str = Field(max_length=32)


class LedgerEntry(SQLModel, table=True):
    """One node's charge in one round: exactly an Opacus accountant history entry. ``kind``
    is "train" (a DP-SGD round) or "evaluate" (a scheduled evaluation's DP release)."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint(
            "run_id", "node_id", "round", "kind", name="uq_ledger_run_node_round_kind"
        ),
        Index("ix_ledger_node_federation", "node_id", "federation_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    node_id: str = Field(foreign_key="nodes.id", max_length=36)
    federation_id: str = Field(foreign_key="federations.id", max_length=36)
    run_id: str = Field(foreign_key="runs.id", max_length=36)
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str = Field(max_length=8)
    epsilon_reported: float  # the node's own epsilon of its whole history after this round
    recorded_at: str = Field(max_length=32)
    kind: str = Field(default="train", max_length=8)
    # False: the node charged it (its update left the node) but the round produced no
    # aggregate with it, e.g. a secure round that failed after the masked inputs were sent
    aggregated: bool = Field(default=True)
    source: str = Field(default="journal", max_length=16)  # or "node_ledger" (a repair)
    # the node's commitment (HMAC) to the charge's row in its chained ledger, as reported
    node_ledger_row: str | None = Field(default=None, max_length=64)


class Release(SQLModel, table=True):
    """A versioned release of a finished run's final model, with its signed manifest."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("federation_id", "version", name="uq_release_version"),)

    id: str = Field(primary_key=True, max_length=36)
    federation_id: str = Field(foreign_key="federations.id", max_length=36)
    run_id: str = Field(foreign_key="runs.id", index=True, max_length=36)
    version: int
    directory: str = Field(max_length=1000)
    model_digest: str = Field(max_length=100)
    signed_manifest: str = Field(sa_column=Column(Text, nullable=False))
    created_at: str = Field(max_length=32)


class ReleaseGrant(SQLModel, table=True):
    """A tenant allowed to download a release beyond the run's participants."""

    __tablename__ = "release_grants"

    release_id: str = Field(foreign_key="releases.id", primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", primary_key=True, max_length=36)
    created_at: str = Field(max_length=32)


class AuditEvent(SQLModel, table=True):
    """One row of the append-only, hash-chained audit log."""

    __tablename__ = "audit_events"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: str = Field(max_length=32)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=100)
    target: str = Field(max_length=200)
    details: str = Field(sa_column=Column(Text, nullable=False))  # canonical JSON
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64, unique=True)


class AuditCheckpoint(SQLModel, table=True):
    """The coordinator's signature over the audit chain's head at row ``seq``."""

    __tablename__ = "audit_checkpoints"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    head_hash: str = Field(max_length=64)
    at: str = Field(max_length=32)
    signed: str = Field(sa_column=Column(Text, nullable=False))  # {"checkpoint", "signature"}


METADATA = SQLModel.metadata
