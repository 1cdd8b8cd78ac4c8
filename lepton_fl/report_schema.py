"""The schema of the privacy report, ``lepton-privacy-report/1`` (docs/privacy-report.md).

The coordinator writes the report; `lepton audit verify` validates every report against
these models before it checks anything else, and ``docs/privacy-report.schema.json`` is
their JSON Schema (``python -m lepton_fl.report_schema`` prints it; a test keeps the file
in step). Unknown fields are refused: a verifier must not skip what it does not read.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REPORT_FORMAT = "lepton-privacy-report/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scope(_Strict):
    kind: Literal["platform", "tenant", "federation", "release"]
    id: str | None
    name: str | None


class Viewer(_Strict):
    role: str
    tenant_id: str | None


class TenantRef(_Strict):
    id: str
    name: str | None


class Entry(_Strict):
    """One charge: exactly an Opacus accountant history entry, plus what it was for."""

    run_id: str
    federation_id: str
    round: int = Field(ge=0)
    kind: Literal["train", "evaluate"]
    noise_multiplier: float = Field(gt=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=0)
    delta: float = Field(gt=0, lt=1)
    accountant: Literal["rdp", "prv"]
    aggregated: bool
    source: str
    recorded_at: str
    epsilon_reported: float = Field(ge=0)
    epsilon_cumulative: float = Field(ge=0)


class Node(_Strict):
    id: str
    name: str
    tenant: TenantRef
    state: str
    epsilon_budget: float = Field(ge=0)
    epsilon_spent: float = Field(ge=0)
    epsilon_coordinator: float = Field(ge=0)
    epsilon_node_reported: float | None
    epsilon_remaining: float = Field(ge=0)
    entries: list[Entry]


class Round(_Strict):
    round: int = Field(ge=0)
    participants: list[str]
    participants_other: int = Field(ge=0)
    refusals: dict[str, str]
    refusals_other: int = Field(ge=0)
    num_examples: int | None
    seconds: float | None


class MembershipRelease(_Strict):
    """One node's (or the pooled) noised loss histograms over ``loss_bin_edges``."""

    members: list[int]
    nonmembers: list[int]
    noise_std: float = Field(gt=0)


class MembershipResult(_Strict):
    """The loss-threshold attack's AUC on a release, with its bootstrap interval."""

    auc: float | None = Field(ge=0, le=1)
    ci_low: float | None = Field(ge=0, le=1)
    ci_high: float | None = Field(ge=0, le=1)


class MembershipNode(_Strict):
    node_id: str
    name: str
    release: MembershipRelease
    result: MembershipResult


class MembershipAudit(_Strict):
    """The run's membership-inference audit of its final model (``privacy.membership_audit``):
    released with each node's evaluation and charged by its ``evaluate`` entry."""

    method: str
    loss_bin_edges: list[float]
    confidence: float = Field(gt=0, lt=1)
    nodes: list[MembershipNode]
    nodes_other: int = Field(ge=0)
    pooled: MembershipNode | None


class Run(_Strict):
    id: str
    state: str
    created_at: str
    finished_at: str | None
    failure: str | None
    planned_epsilon: float
    rounds_planned: int
    rounds_completed: int
    rounds: list[Round]
    evaluation: dict[str, Any] | None
    membership_audit: MembershipAudit | None = None


class ReleaseRef(_Strict):
    id: str
    version: int
    run_id: str
    model_digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    created_at: str


class Federation(_Strict):
    id: str
    name: str
    digest: str
    task: str
    privacy: dict[str, Any]
    secure_aggregation: dict[str, Any]
    members: list[str]
    members_other: int = Field(ge=0)
    runs: list[Run]
    releases: list[ReleaseRef]


class PrivacyReport(_Strict):
    """The whole report, as signed."""

    format: Literal["lepton-privacy-report/1"]
    generated_at: str
    scope: Scope
    viewer: Viewer
    coordinator_key_fingerprint: str
    nodes: list[Node]
    federations: list[Federation]
    audit_checkpoint: dict[str, Any] | None


def json_schema() -> dict[str, Any]:
    """The report's JSON Schema (what docs/privacy-report.schema.json holds)."""
    schema = PrivacyReport.model_json_schema()
    schema["$id"] = REPORT_FORMAT
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
