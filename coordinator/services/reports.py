"""The auditor's privacy report: every charge behind every epsilon, signed by the coordinator.

A report covers the platform, a tenant, a federation or a release. It lists, per node, every
ledger entry (noise multiplier, sample rate, steps, delta, accountant, what it was charged
for, whether it entered an aggregate), the epsilon after each entry as the coordinator
computes it and as the node reported it, the node's budget; per federation its privacy
policy, its runs round by round (participants, refusals, the evaluation's DP release) and
its releases with their digests; and the audit log's newest signed checkpoint. The
coordinator signs the canonical JSON with its Ed25519 key (a detached signature), so an
auditor can keep it, and `lepton audit verify` can recompute every epsilon offline.

A tenant-scoped reader (a tenant admin or a tenant auditor) gets a report of its own nodes:
other members of its federations appear only as counts. The schema is documented in
docs/privacy-report.md; ``format`` changes with any incompatible change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from coordinator.db import Database
from coordinator.db.tables import (
    Federation,
    FederationMember,
    LedgerEntry,
    Node,
    Release,
    Run,
    RunRound,
    Tenant,
)
from coordinator.fl.journal import EvaluationRecord, JournalError, read_journal
from coordinator.services import audit
from coordinator.services.common import (
    Actor,
    check_tenant_visible,
    looks_like_id,
    not_found,
    now_iso,
    require_role,
    scope_tenant,
)
from coordinator.services.errors import InvalidError
from coordinator.services.federations import load_definition
from coordinator.services.ledger import at_least_reported, history_epsilon, node_entries
from coordinator.services.runs import failure_as_seen
from lepton_fl.crypto.detached import sign_detached
from lepton_fl.crypto.release import public_key_fingerprint, public_key_pem
from lepton_fl.privacy.membership import (
    CONFIDENCE,
    LOSS_BIN_EDGES,
    MembershipRelease,
    pool_releases,
    result_fields,
)
from lepton_fl.report_schema import REPORT_FORMAT

ScopeKind = Literal["platform", "tenant", "federation", "release"]


@dataclass(frozen=True)
class Scope:
    """What a report covers: the nodes, federations and runs in it."""

    kind: ScopeKind
    id: str | None
    name: str | None
    node_ids: list[str]
    federation_ids: list[str]
    run_ids: set[str] | None  # None: every run of the federations


def privacy_report(
    db: Database,
    actor: Actor,
    signing_key: Ed25519PrivateKey,
    *,
    tenant_id: str | None = None,
    federation_id: str | None = None,
    release_id: str | None = None,
) -> dict[str, Any]:
    """``{"report": {...}, "signature": {...}}`` for at most one of tenant, federation or
    release (none: the whole platform, for platform-wide readers only)."""
    require_role(actor, "platform_admin", "tenant_admin", "auditor", action="read reports")
    if sum(x is not None for x in (tenant_id, federation_id, release_id)) > 1:
        raise InvalidError(
            "Give at most one of tenant_id, federation_id and release_id: a report covers "
            "one tenant, one federation or one release (or, with none, the platform).",
            code="invalid_report_scope",
        )
    viewer = scope_tenant(actor)
    if viewer is not None and tenant_id is None and federation_id is None and release_id is None:
        tenant_id = viewer  # a tenant-scoped reader's default view is its own tenant
    with db.read() as session:
        scope = _scope(session, actor, tenant_id, federation_id, release_id)
        visible = [n for n in scope.node_ids if _node_visible(session, viewer, n)]
        report: dict[str, Any] = {
            "format": REPORT_FORMAT,
            "generated_at": now_iso(),
            "scope": {"kind": scope.kind, "id": scope.id, "name": scope.name},
            "viewer": {"role": actor.role, "tenant_id": viewer},
            "coordinator_key_fingerprint": public_key_fingerprint(public_key_pem(signing_key)),
            "nodes": [_node_section(session, node_id) for node_id in visible],
            "federations": [
                _federation_section(session, fid, scope.run_ids, set(visible))
                for fid in scope.federation_ids
            ],
            "audit_checkpoint": audit.latest_signed(session),
        }
    return {"report": report, "signature": sign_detached(REPORT_FORMAT, report, signing_key)}


def _scope(
    session: Session,
    actor: Actor,
    tenant_id: str | None,
    federation_id: str | None,
    release_id: str | None,
) -> Scope:
    if release_id is not None:
        release = session.get(Release, release_id) if looks_like_id(release_id) else None
        if release is None:
            raise not_found("release", release_id)
        manifest = json.loads(release.signed_manifest)["manifest"]
        node_ids = [p["node_id"] for p in manifest.get("participants", [])]
        _require_some_visible(session, actor, node_ids, "release", release_id)
        name = f"{manifest['federation']['name']} v{release.version}"
        return Scope(
            "release", release_id, name, node_ids, [release.federation_id], {release.run_id}
        )
    if federation_id is not None:
        federation = (
            session.get(Federation, federation_id) if looks_like_id(federation_id) else None
        )
        if federation is None:
            raise not_found("federation", federation_id)
        node_ids = list(
            session.exec(
                select(FederationMember.node_id).where(
                    FederationMember.federation_id == federation_id
                )
            ).all()
        )
        _require_some_visible(session, actor, node_ids, "federation", federation_id)
        return Scope("federation", federation_id, federation.name, node_ids, [federation_id], None)
    if tenant_id is not None:
        tenant = session.get(Tenant, tenant_id) if looks_like_id(tenant_id) else None
        if tenant is None:
            raise not_found("tenant", tenant_id)
        check_tenant_visible(actor, tenant_id, "tenant", tenant_id)
        node_ids = list(
            session.exec(
                select(Node.id).where(Node.tenant_id == tenant_id).order_by(col(Node.created_at))
            ).all()
        )
        federation_ids = _federations_of(session, node_ids)
        return Scope("tenant", tenant_id, tenant.name, node_ids, federation_ids, None)
    node_ids = list(session.exec(select(Node.id).order_by(col(Node.created_at))).all())
    federation_ids = list(
        session.exec(select(Federation.id).order_by(col(Federation.created_at))).all()
    )
    return Scope("platform", None, None, node_ids, federation_ids, None)


def _require_some_visible(
    session: Session, actor: Actor, node_ids: Sequence[str], kind: str, ident: str
) -> None:
    """A tenant-scoped reader sees a federation or release only if one of its nodes is in it."""
    viewer = scope_tenant(actor)
    if viewer is not None and not any(_node_visible(session, viewer, n) for n in node_ids):
        raise not_found(kind, ident)


def _node_visible(session: Session, viewer: str | None, node_id: str) -> bool:
    if viewer is None:
        return True
    node = session.get(Node, node_id)
    return node is not None and node.tenant_id == viewer


def _federations_of(session: Session, node_ids: Sequence[str]) -> list[str]:
    if not node_ids:
        return []
    rows = session.exec(
        select(FederationMember.federation_id)
        .where(col(FederationMember.node_id).in_(node_ids))
        .distinct()
    ).all()
    return sorted(rows)


def _node_section(session: Session, node_id: str) -> dict[str, Any]:
    node = session.get(Node, node_id)
    assert node is not None
    tenant = session.get(Tenant, node.tenant_id)
    entries = node_entries(session, node_id)
    cumulative = [history_epsilon(entries[: i + 1]) for i in range(len(entries))]
    coordinator = cumulative[-1] if cumulative else 0.0
    spent = at_least_reported(coordinator, entries)
    return {
        "id": node.id,
        "name": node.name,
        "tenant": {"id": node.tenant_id, "name": tenant.name if tenant else None},
        "state": node.state,
        "epsilon_budget": node.epsilon_budget,
        "epsilon_spent": spent,
        "epsilon_coordinator": coordinator,
        "epsilon_node_reported": max((e.epsilon_reported for e in entries), default=None),
        "epsilon_remaining": max(0.0, node.epsilon_budget - spent),
        "entries": [_entry(e, eps) for e, eps in zip(entries, cumulative, strict=True)],
    }


def _entry(entry: LedgerEntry, cumulative: float) -> dict[str, Any]:
    return {
        "run_id": entry.run_id,
        "federation_id": entry.federation_id,
        "round": entry.round,
        "kind": entry.kind,
        "noise_multiplier": entry.noise_multiplier,
        "sample_rate": entry.sample_rate,
        "steps": entry.steps,
        "delta": entry.delta,
        "accountant": entry.accountant,
        "aggregated": entry.aggregated,
        "source": entry.source,
        "recorded_at": entry.recorded_at,
        "epsilon_reported": entry.epsilon_reported,
        "epsilon_cumulative": cumulative,
    }


def _federation_section(
    session: Session, federation_id: str, run_ids: set[str] | None, visible: set[str]
) -> dict[str, Any]:
    federation = session.get(Federation, federation_id)
    assert federation is not None
    definition = load_definition(federation)
    members = session.exec(
        select(FederationMember).where(FederationMember.federation_id == federation_id)
    ).all()
    runs = session.exec(
        select(Run).where(Run.federation_id == federation_id).order_by(col(Run.created_at))
    ).all()
    shown = [r for r in runs if (run_ids is None or r.id in run_ids) and _took_part(r, visible)]
    releases = session.exec(
        select(Release).where(Release.federation_id == federation_id).order_by(col(Release.version))
    ).all()
    run_set = {r.id for r in shown}
    return {
        "id": federation.id,
        "name": federation.name,
        "digest": federation.digest,
        "task": definition.task,
        "privacy": definition.privacy.model_dump(mode="json"),
        "secure_aggregation": definition.secure_aggregation.model_dump(mode="json"),
        "members": sorted(m.node_id for m in members if m.node_id in visible),
        "members_other": sum(m.node_id not in visible for m in members),
        "runs": [_run_section(session, run, visible) for run in shown],
        "releases": [
            {
                "id": r.id,
                "version": r.version,
                "run_id": r.run_id,
                "model_digest": r.model_digest,
                "created_at": r.created_at,
            }
            for r in releases
            if r.run_id in run_set
        ],
    }


def _took_part(run: Run, visible: set[str]) -> bool:
    return any(m.get("node_id") in visible for m in json.loads(run.members))


def _run_section(session: Session, run: Run, visible: set[str]) -> dict[str, Any]:
    rounds = session.exec(
        select(RunRound).where(RunRound.run_id == run.id).order_by(col(RunRound.round))
    ).all()
    return {
        "id": run.id,
        "state": run.state,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "failure": failure_as_seen(run, visible),
        "planned_epsilon": run.planned_epsilon,
        "rounds_planned": run.rounds_planned,
        "rounds_completed": run.rounds_completed,
        "rounds": [_round_section(r, visible) for r in rounds],
        **_evaluation_sections(run, visible),
    }


def _round_section(row: RunRound, visible: set[str]) -> dict[str, Any]:
    participants: list[str] = json.loads(row.participants)
    refusals: dict[str, str] = json.loads(row.refusals)
    return {
        "round": row.round,
        "participants": [n for n in participants if n in visible],
        "participants_other": sum(n not in visible for n in participants),
        "refusals": {n: why for n, why in refusals.items() if n in visible},
        "refusals_other": sum(n not in visible for n in refusals),
        "num_examples": row.num_examples,
        "seconds": row.seconds,
    }


def _evaluation_sections(run: Run, visible: set[str]) -> dict[str, Any]:
    """The federation's DP evaluation release of the final model, and the membership audit
    released with it when the spec asked for one (both from the run journal)."""
    record = _evaluation_record(run)
    evaluation = None
    if record is not None and record.aggregate is not None:
        evaluation = record.aggregate.as_dict()
    return {"evaluation": evaluation, "membership_audit": _membership_audit(run, record, visible)}


def _evaluation_record(run: Run) -> EvaluationRecord | None:
    path = Path(run.journal_path)
    if not path.is_file():
        return None
    try:
        return read_journal(path).evaluation
    except (JournalError, OSError):
        return None


MEMBERSHIP_METHOD = (
    "Loss-threshold membership inference on the final model: each node's training rows "
    "(members) against its held-out rows (non-members). A node releases the two loss "
    "histograms jointly with its evaluation counts (one Gaussian release, L2 sensitivity "
    "sqrt(2), charged as its evaluate entry); AUC with ties in a bin counted half, interval "
    "by seeded parametric bootstrap over sampling and the release's noise. 0.5: no signal."
)


def _membership_audit(
    run: Run, record: EvaluationRecord | None, visible: set[str]
) -> dict[str, Any] | None:
    """Each visible node's release with the attack's AUC and interval, a count of the other
    members' releases, and every release pooled (a sum of DP releases, shown to all)."""
    if record is None:
        return None
    releases = {
        name: node.membership for name, node in record.nodes.items() if node.membership is not None
    }
    if not releases:
        return None
    ids = {m["name"]: m.get("node_id", "") for m in json.loads(run.members)}

    def entry(node_id: str, name: str, release: MembershipRelease) -> dict[str, Any]:
        return {
            "node_id": node_id,
            "name": name,
            "release": {
                "members": list(release.members),
                "nonmembers": list(release.nonmembers),
                "noise_std": release.noise_std,
            },
            "result": result_fields(release),
        }

    pooled = pool_releases(list(releases.values()))
    return {
        "method": MEMBERSHIP_METHOD,
        "loss_bin_edges": list(LOSS_BIN_EDGES),
        "confidence": CONFIDENCE,
        "nodes": [
            entry(ids.get(name, ""), name, release)
            for name, release in sorted(releases.items())
            if ids.get(name) in visible
        ],
        "nodes_other": sum(ids.get(name) not in visible for name in releases),
        "pooled": None if pooled is None else entry("", "all members", pooled),
    }
