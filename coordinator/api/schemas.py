"""Request and response bodies of the admin API."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coordinator.db.tables import (
    ApiKey,
    AuditEvent,
    Federation,
    FederationMember,
    Node,
    Release,
    Run,
    RunRound,
    Tenant,
)
from coordinator.services.federations import SLUG_PATTERN, FederationDefinition
from coordinator.services.ledger import NodeLedger
from coordinator.services.runs import failure_as_seen

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
Id = Annotated[str, Field(max_length=36)]
Name = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=63)]
Text = Annotated[str, Field(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


class ErrorOut(BaseModel):
    """Every error: a stable code, a sentence, and the field when one is to blame."""

    code: str
    message: str
    field: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok"]


class MeOut(BaseModel):
    role: str
    tenant_id: str | None
    key_id: str | None


class TenantIn(BaseModel):
    model_config = _STRICT
    name: Name
    display_name: Text = ""


class TenantOut(BaseModel):
    id: str
    name: str
    display_name: str
    disabled: bool
    created_at: str
    disabled_at: str | None

    @classmethod
    def of(cls, t: Tenant) -> TenantOut:
        return cls.model_validate(t, from_attributes=True)


class ApiKeyIn(BaseModel):
    model_config = _STRICT
    role: Literal["platform_admin", "tenant_admin", "auditor"]
    tenant_id: Id | None = None
    name: Text = ""


class ApiKeyOut(BaseModel):
    id: str
    prefix: str
    role: str
    tenant_id: str | None
    name: str
    created_at: str
    created_by: str
    revoked_at: str | None

    @classmethod
    def of(cls, k: ApiKey) -> ApiKeyOut:
        return cls.model_validate(k, from_attributes=True)


class ApiKeyCreatedOut(ApiKeyOut):
    key: str = Field(description="The full key. It is shown only now: store it safely.")


class NodeIn(BaseModel):
    model_config = _STRICT
    name: Name
    tenant_id: Id | None = Field(
        default=None, description="Required for platform admins; a tenant admin's own tenant."
    )
    epsilon_budget: Annotated[float, Field(gt=0, le=1000)] = 8.0
    token_ttl_hours: Annotated[int, Field(ge=1, le=720)] = 24


class NodeOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    epsilon_budget: float
    state: Literal["pending", "enrolled", "revoked"]
    flower_node_id: str | None
    public_key_fingerprint: str | None
    token_expires_at: str | None
    created_at: str
    enrolled_at: str | None
    revoked_at: str | None

    @classmethod
    def of(cls, n: Node) -> NodeOut:
        out = cls.model_validate(n, from_attributes=True)
        if out.state != "pending":
            out.token_expires_at = None
        return out


class NodeCreatedOut(NodeOut):
    enrollment_token: str = Field(
        description="One-time token the node presents with its public key; shown only now."
    )


class EnrolledNodeOut(NodeOut):
    coordinator_public_key_pem: str = Field(
        description="The coordinator's Ed25519 signing public key (PEM): pin it in the node's "
        "node.toml as [coordinator] public_key after comparing its fingerprint out of band; "
        "the node refuses every run not signed with it."
    )
    coordinator_key_fingerprint: str = Field(
        description="'sha256:' + hex of the raw public key, to compare over a second channel."
    )


class EnrollIn(BaseModel):
    model_config = _STRICT
    token: Annotated[str, Field(min_length=1, max_length=200)]
    public_key: Annotated[str, Field(min_length=1, max_length=2000)] = Field(
        description="The node's OpenSSH EC public key (NAME.pub), e.g. 'ecdsa-sha2-nistp256 AAAA'."
    )


class FederationIn(FederationDefinition):
    members: list[Id] = Field(default_factory=list, max_length=1000)


class FederationOut(BaseModel):
    id: str
    name: str
    digest: str
    created_at: str
    definition: FederationDefinition

    @classmethod
    def of(cls, f: Federation) -> FederationOut:
        return cls(
            id=f.id,
            name=f.name,
            digest=f.digest,
            created_at=f.created_at,
            definition=FederationDefinition.model_validate_json(f.definition),
        )


class MemberOut(BaseModel):
    federation_id: str
    node_id: str
    status: Literal["requested", "approved"]
    created_at: str

    @classmethod
    def of(cls, m: FederationMember) -> MemberOut:
        return cls.model_validate(m, from_attributes=True)


class RunMemberOut(BaseModel):
    node_id: str
    name: str
    tenant_id: str
    flower_node_id: int


class RunOut(BaseModel):
    id: str
    federation_id: str
    state: Literal["submitted", "running", "finished", "failed", "stopped"]
    flower_run_id: str | None
    planned_epsilon: float
    rounds_planned: int
    rounds_completed: int
    members: list[RunMemberOut]
    other_members: int = Field(
        0, description="Members of other tenants, counted only (for tenant-scoped keys)."
    )
    failure: str | None
    created_at: str
    finished_at: str | None

    @classmethod
    def of(cls, r: Run, mine: set[str] | None = None) -> RunOut:
        """`mine`: the node ids a tenant-scoped key may see (`runs.own_members`)."""
        members = json.loads(r.members)
        shown = [m for m in members if mine is None or m["node_id"] in mine]
        return cls(
            id=r.id,
            federation_id=r.federation_id,
            state=r.state,  # type: ignore[arg-type]
            flower_run_id=r.flower_run_id,
            planned_epsilon=r.planned_epsilon,
            rounds_planned=r.rounds_planned,
            rounds_completed=r.rounds_completed,
            members=[RunMemberOut.model_validate(m) for m in shown],
            other_members=len(members) - len(shown),
            failure=failure_as_seen(r, mine),
            created_at=r.created_at,
            finished_at=r.finished_at,
        )


class RoundOut(BaseModel):
    round: int
    participants: list[str]
    other_participants: int = Field(
        0, description="Participants of other tenants, counted only (tenant-scoped keys)."
    )
    refusals: dict[str, str]
    other_refusals: int = Field(
        0, description="Refusals by other tenants' nodes, counted only (tenant-scoped keys)."
    )
    num_examples: int
    train_loss: float | None
    seconds: float | None
    recorded_at: str

    @classmethod
    def of(cls, r: RunRound, mine: set[str] | None = None) -> RoundOut:
        """`mine`: the node ids a tenant-scoped key may see (`runs.own_members`)."""
        participants: list[str] = json.loads(r.participants)
        refusals: dict[str, str] = json.loads(r.refusals)
        shown = [p for p in participants if mine is None or p in mine]
        refused = {n: why for n, why in refusals.items() if mine is None or n in mine}
        return cls(
            round=r.round,
            participants=shown,
            other_participants=len(participants) - len(shown),
            refusals=refused,
            other_refusals=len(refusals) - len(refused),
            num_examples=r.num_examples,
            train_loss=r.train_loss,
            seconds=r.seconds,
            recorded_at=r.recorded_at,
        )


class LedgerEntryOut(BaseModel):
    run_id: str
    federation_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    epsilon_reported: float
    recorded_at: str
    kind: str
    aggregated: bool = Field(
        description="False: the node charged it (its update left the node) but it entered "
        "no aggregate, e.g. a secure round that failed after the masked inputs were sent."
    )
    source: str = Field(
        description="Where the coordinator learnt the charge: 'journal' (the run) or "
        "'node_ledger' (a reconcile repair from the node's own ledger)."
    )
    node_ledger_row: str | None = Field(
        default=None,
        description="The node's commitment to the charge's row in its hash-chained ledger "
        "(an HMAC it reported with the charge); reconcile names a node row that no longer "
        "gives it.",
    )


class FederationSpendOut(BaseModel):
    federation_id: str
    federation_name: str
    epsilon: float
    rounds: int


class NodeLedgerOut(BaseModel):
    node_id: str
    node_name: str
    tenant_id: str
    epsilon_budget: float
    epsilon_spent: float = Field(description="Recomputed with Opacus from the whole history.")
    epsilon_remaining: float = Field(
        description="The budget less the larger of epsilon_spent and epsilon_reported."
    )
    epsilon_reported: float | None = Field(description="The node's own latest figure.")
    federations: list[FederationSpendOut]
    history: list[LedgerEntryOut]

    @classmethod
    def of(cls, report: NodeLedger) -> NodeLedgerOut:
        return cls(
            node_id=report.node_id,
            node_name=report.node_name,
            tenant_id=report.tenant_id,
            epsilon_budget=report.epsilon_budget,
            epsilon_spent=_finite(report.epsilon_spent),
            epsilon_remaining=_finite(report.epsilon_remaining),
            epsilon_reported=report.epsilon_reported,
            federations=[
                FederationSpendOut(
                    federation_id=f.federation_id,
                    federation_name=f.federation_name,
                    epsilon=_finite(f.epsilon),
                    rounds=f.rounds,
                )
                for f in report.federations
            ],
            history=[
                LedgerEntryOut.model_validate(e, from_attributes=True) for e in report.history
            ],
        )


def _finite(value: float) -> float:
    return value if value < 1e300 else 1e300


class NodeLedgerRowIn(BaseModel):
    model_config = _STRICT
    flower_run_id: Annotated[str, Field(max_length=24)]
    round: Annotated[int, Field(ge=0, le=1_000_000)]
    noise_multiplier: Annotated[float, Field(gt=0, le=1e6)]
    sample_rate: Annotated[float, Field(gt=0, le=1)]
    steps: Annotated[int, Field(ge=0, le=10**9)]
    kind: Literal["train", "evaluate"] = "train"
    delta: Annotated[float, Field(gt=0, lt=1)] | None = None
    accountant: Literal["rdp", "prv"] | None = None
    epsilon_after: Annotated[float, Field(ge=0, le=1e6)] | None = None
    row_commitment: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class ReconcileIn(BaseModel):
    model_config = _STRICT
    entries: list[NodeLedgerRowIn] = Field(max_length=100_000)
    repair: bool = Field(
        default=False,
        description="Record the node's charges the coordinator lacks (rows with delta, "
        "accountant and epsilon_after) as charged, not aggregated. Not for auditors.",
    )


class MismatchOut(BaseModel):
    flower_run_id: str
    round: int
    problem: str
    kind: str


class ReconcileOut(BaseModel):
    ok: bool
    mismatches: list[MismatchOut]
    repaired: list[MismatchOut] = Field(default_factory=list)


class ReleaseIn(BaseModel):
    model_config = _STRICT
    grant_tenant_ids: list[Id] = Field(default_factory=list, max_length=1000)


class ReleaseOut(BaseModel):
    id: str
    federation_id: str
    run_id: str
    version: int
    model_digest: str
    created_at: str
    signed_manifest: dict[str, Any]

    @classmethod
    def of(cls, r: Release) -> ReleaseOut:
        return cls(
            id=r.id,
            federation_id=r.federation_id,
            run_id=r.run_id,
            version=r.version,
            model_digest=r.model_digest,
            created_at=r.created_at,
            signed_manifest=json.loads(r.signed_manifest),
        )


class GrantIn(BaseModel):
    model_config = _STRICT
    tenant_id: Id


class GrantOut(BaseModel):
    release_id: str
    tenant_id: str
    created_at: str


class ReleaseVerdictOut(BaseModel):
    ok: bool
    model_digest: str | None
    public_key_fingerprint: str
    code: str | None
    message: str | None


class SigningKeyOut(BaseModel):
    algorithm: Literal["ed25519"]
    public_key_pem: str
    fingerprint: str


class AuditEventOut(BaseModel):
    seq: int
    at: str
    actor: str
    action: str
    target: str
    details: Any
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, e: AuditEvent) -> AuditEventOut:
        try:
            details = json.loads(e.details)
        except ValueError:
            details = e.details
        return cls(
            seq=e.seq,
            at=e.at,
            actor=e.actor,
            action=e.action,
            target=e.target,
            details=details,
            prev_hash=e.prev_hash,
            hash=e.hash,
        )


class ChainVerdictOut(BaseModel):
    ok: bool
    events_checked: int
    first_broken_seq: int | None
    reason: str | None
    head_hash: str | None
    checkpoints_checked: int = Field(
        0, description="Signed checkpoints the log was held to: the stored ones and yours."
    )
    latest_checkpoint: dict[str, Any] | None = Field(
        None, description="The newest signed checkpoint: keep it to check the log later."
    )


class HeldCheckpointsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoints: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=10_000,
        description="Signed checkpoints you kept (from releases, reports, runs or "
        "GET /audit/checkpoints); each is checked against the coordinator's key.",
    )


class SignedReportOut(BaseModel):
    report: dict[str, Any] = Field(
        description="The privacy report (format lepton-privacy-report/1, docs/privacy-report.md)."
    )
    signature: dict[str, str] = Field(
        description="The coordinator's detached Ed25519 signature over the report's canonical "
        "JSON (domain lepton-privacy-report/1)."
    )
