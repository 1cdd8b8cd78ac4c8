"""Releases: a finished run's final model, signed, versioned, downloadable by permitted tenants.

A release is a directory written by `lepton_fl.crypto.release.write_release`: the weights
as safetensors and a manifest (run, rounds, participants, DP and secure-aggregation
parameters, epsilon per node, model digest) signed with the coordinator's Ed25519 key.
Tenants whose nodes took part in the run may download it, and tenants a platform admin
granted it to; any other tenant admin gets 404, as for a release that does not exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import col, select

from coordinator.db import Database
from coordinator.db.tables import (
    Federation,
    LedgerEntry,
    Release,
    ReleaseGrant,
    Run,
    RunRound,
    Tenant,
)
from coordinator.services import audit
from coordinator.services.common import (
    Actor,
    looks_like_id,
    new_id,
    not_found,
    now_iso,
    require_role,
    require_writer,
    scope_tenant,
)
from coordinator.services.errors import ConflictError, ForbiddenError
from coordinator.services.federations import check_definition, load_definition
from coordinator.services.ledger import history_epsilon
from lepton_fl.crypto.release import (
    MODEL_FILE,
    ReleaseError,
    public_key_fingerprint,
    public_key_pem,
    verify_release,
    write_release,
)


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The ServerApp's `checkpoint.npz` (the weights list and `round`) as named tensors."""
    with np.load(path) as data:
        names = sorted((k for k in data.files if k.startswith("arr_")), key=lambda k: int(k[4:]))
        return {f"layer_{i:03d}": np.ascontiguousarray(data[k]) for i, k in enumerate(names)}


def create_release(
    db: Database,
    actor: Actor,
    run_id: str,
    *,
    releases_dir: Path,
    signing_key: Ed25519PrivateKey,
    grant_tenant_ids: list[str] | None = None,
) -> Release:
    """Promote a finished run's final model to the federation's next release version."""
    require_writer(actor, action="publish releases")
    require_role(actor, "platform_admin", action="publish releases")
    with db.write() as session:
        run = session.get(Run, run_id) if looks_like_id(run_id) else None
        if run is None:
            raise not_found("run", run_id)
        checkpoint = Path(run.checkpoint_path) if run.checkpoint_path else None
        if run.state != "finished" or checkpoint is None or not checkpoint.is_file():
            raise ConflictError(
                f"Run {run_id} is {run.state}"
                + ("" if run.state != "finished" else " but its final model is missing")
                + "; only a finished run's final model can be released.",
                code="run_not_finished",
            )
        federation = session.get(Federation, run.federation_id)
        assert federation is not None
        for tenant_id in grant_tenant_ids or []:
            if not looks_like_id(tenant_id) or session.get(Tenant, tenant_id) is None:
                raise not_found("tenant", tenant_id)
        definition = load_definition(federation)
        spec = check_definition(definition)
        members = {m["node_id"]: m for m in json.loads(run.members)}
        rounds = session.exec(
            select(RunRound).where(RunRound.run_id == run_id).order_by(col(RunRound.round))
        ).all()
        participant_ids = sorted({n for r in rounds for n in json.loads(r.participants)})
        entries = session.exec(
            select(LedgerEntry).where(LedgerEntry.run_id == run_id).order_by(col(LedgerEntry.round))
        ).all()
        epsilon: dict[str, dict[str, float | None]] = {}
        for node_id in participant_ids:
            mine = [e for e in entries if e.node_id == node_id]
            epsilon[node_id] = {
                "run": history_epsilon(mine),
                "node_total_reported": mine[-1].epsilon_reported if mine else None,
            }
        previous = session.exec(
            select(Release.version)
            .where(Release.federation_id == federation.id)
            .order_by(col(Release.version).desc())
        ).first()
        version = (previous or 0) + 1
        release_id = new_id()
        manifest: dict[str, Any] = {
            "release_id": release_id,
            "version": version,
            "created_at": now_iso(),
            "federation": {
                "id": federation.id,
                "name": federation.name,
                "digest": federation.digest,
                # the spec every run was sent (task, model, seed): a node rebuilds the model
                # from it (and can check it against spec_digest) before it serves predictions
                "spec": json.loads(spec.canonical_json()),
                "spec_digest": spec.digest(),
            },
            "run": {"id": run.id, "flower_run_id": run.flower_run_id},
            "rounds": run.rounds_completed,
            "participants": [
                {
                    "node_id": n,
                    "name": members.get(n, {}).get("name"),
                    "tenant_id": members.get(n, {}).get("tenant_id"),
                }
                for n in participant_ids
            ],
            "round_participants": [
                {"round": r.round, "node_ids": json.loads(r.participants)} for r in rounds
            ],
            "differential_privacy": definition.privacy.model_dump(mode="json"),
            "secure_aggregation": definition.secure_aggregation.model_dump(mode="json"),
            "epsilon_spent": epsilon,
            # the audit log's newest signed head: once a release is out, the log up to
            # here can no longer be cut or rewritten without contradicting it
            "audit_checkpoint": audit.latest_signed(session),
        }
        directory = releases_dir / f"{federation.name}-v{version}-{release_id[:8]}"
        signed = write_release(directory, load_checkpoint(checkpoint), manifest, signing_key)
        release = Release(
            id=release_id,
            federation_id=federation.id,
            run_id=run.id,
            version=version,
            directory=str(directory),
            model_digest=str(signed["manifest"]["model_digest"]),
            signed_manifest=json.dumps(signed, sort_keys=True),
            created_at=str(manifest["created_at"]),
        )
        session.add(release)
        session.flush()
        for tenant_id in dict.fromkeys(grant_tenant_ids or []):
            session.add(
                ReleaseGrant(release_id=release_id, tenant_id=tenant_id, created_at=now_iso())
            )
        audit.append_event(
            session,
            actor,
            "release.create",
            f"release:{release_id}",
            {
                "run_id": run.id,
                "version": version,
                "model_digest": release.model_digest,
                "grants": grant_tenant_ids or [],
            },
        )
    return release


def _permitted_tenants(release: Release, grants: list[str]) -> set[str]:
    manifest = json.loads(release.signed_manifest)["manifest"]
    tenants = {p.get("tenant_id") for p in manifest.get("participants", [])}
    return {t for t in tenants if t} | set(grants)


def _grants(db: Database, release_id: str) -> list[str]:
    with db.read() as session:
        rows = session.exec(select(ReleaseGrant).where(ReleaseGrant.release_id == release_id))
        return [g.tenant_id for g in rows.all()]


def get_release(db: Database, actor: Actor, release_id: str) -> Release:
    """A release the actor may see (tenant-scoped keys: only their tenant's permitted ones;
    a tenant auditor gets the manifest with other tenants' participants as counts)."""
    release = db.fetch(Release, release_id) if looks_like_id(release_id) else None
    if release is None:
        raise not_found("release", release_id)
    scope = scope_tenant(actor)
    if scope is not None and scope not in _permitted_tenants(release, _grants(db, release_id)):
        raise not_found("release", release_id)
    return _as_seen_by(actor, release)


def list_releases(db: Database, actor: Actor) -> list[Release]:
    """Releases the actor may see, newest first."""
    with db.read() as session:
        releases = list(
            session.exec(select(Release).order_by(col(Release.created_at).desc())).all()
        )
        grants: dict[str, list[str]] = {}
        for g in session.exec(select(ReleaseGrant)).all():
            grants.setdefault(g.release_id, []).append(g.tenant_id)
    scope = scope_tenant(actor)
    if scope is None:
        return releases
    return [
        _as_seen_by(actor, r)
        for r in releases
        if scope in _permitted_tenants(r, grants.get(r.id, []))
    ]


def _as_seen_by(actor: Actor, release: Release) -> Release:
    """The release as a tenant auditor sees it: in the manifest, other tenants' nodes are
    only counted (participants, per-round node ids, epsilon per node). Being altered, that
    manifest no longer carries the signature: `verify_stored_release` checks the original.
    Tenant admins keep the whole signed manifest, which their nodes verify offline."""
    scope = scope_tenant(actor)
    if scope is None or actor.role != "auditor":
        return release
    signed = json.loads(release.signed_manifest)
    manifest = signed["manifest"]
    participants = manifest.get("participants", [])
    mine = {p["node_id"] for p in participants if p.get("tenant_id") == scope}
    manifest["participants"] = [p for p in participants if p["node_id"] in mine]
    manifest["other_participants"] = len(participants) - len(mine)
    manifest["round_participants"] = [
        {
            "round": r["round"],
            "node_ids": [n for n in r["node_ids"] if n in mine],
            "other_participants": sum(n not in mine for n in r["node_ids"]),
        }
        for r in manifest.get("round_participants", [])
    ]
    spent = manifest.get("epsilon_spent", {})
    manifest["epsilon_spent"] = {n: e for n, e in spent.items() if n in mine}
    redacted = {
        "manifest": manifest,
        "redacted": "Other tenants' nodes are shown only as counts, so this copy carries no "
        "signature; GET /releases/{id}/verification checks the signed original.",
    }
    fields = {name: getattr(release, name) for name in Release.model_fields}
    return Release(**(fields | {"signed_manifest": json.dumps(redacted)}))


def model_path(db: Database, actor: Actor, release_id: str) -> Path:
    """The weights file, for platform admins and permitted tenants (auditors: 403)."""
    release = get_release(db, actor, release_id)
    if actor.role == "auditor":
        raise ForbiddenError(
            "Auditors read manifests and verify releases; downloading model weights needs a "
            "platform admin or a permitted tenant's key.",
            code="forbidden",
        )
    return Path(release.directory) / MODEL_FILE


def grant_release(db: Database, actor: Actor, release_id: str, tenant_id: str) -> ReleaseGrant:
    """Allow one more tenant to download a release."""
    require_writer(actor, action="grant releases")
    require_role(actor, "platform_admin", action="grant releases")
    with db.write() as session:
        release = session.get(Release, release_id) if looks_like_id(release_id) else None
        if release is None:
            raise not_found("release", release_id)
        if not looks_like_id(tenant_id) or session.get(Tenant, tenant_id) is None:
            raise not_found("tenant", tenant_id)
        grant = session.get(ReleaseGrant, (release_id, tenant_id))
        if grant is not None:
            return grant
        grant = ReleaseGrant(release_id=release_id, tenant_id=tenant_id, created_at=now_iso())
        session.add(grant)
        audit.append_event(
            session, actor, "release.grant", f"release:{release_id}", {"tenant_id": tenant_id}
        )
    return grant


@dataclass(frozen=True)
class ReleaseVerdict:
    """The result of verifying a stored release with the coordinator's public key."""

    ok: bool
    model_digest: str | None
    public_key_fingerprint: str
    code: str | None = None
    message: str | None = None


def verify_stored_release(
    db: Database, actor: Actor, release_id: str, *, signing_key: Ed25519PrivateKey
) -> ReleaseVerdict:
    """Check the stored files: the manifest's signature and the model's digest."""
    release = get_release(db, actor, release_id)
    pem = public_key_pem(signing_key)
    fingerprint = public_key_fingerprint(pem)
    try:
        manifest, _weights = verify_release(Path(release.directory), pem)
    except ReleaseError as err:
        return ReleaseVerdict(False, None, fingerprint, err.code, err.message)
    return ReleaseVerdict(True, str(manifest["model_digest"]), fingerprint)
