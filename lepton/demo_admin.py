"""The demo's admins at work, through the admin API only.

The platform admin creates a tenant per hospital and a tenant-admin key for each; each
hospital's IT creates its node (with its ε budget) and the node enrolls with its one-time
token and its public key, so the coordinator registers the key with the SuperLink. After the
run, the platform admin reconciles the coordinator's ledger with every node's own, promotes
a release that a hospital downloads and verifies offline, and verifies the audit chain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton.admin_client import (
    AdminClient,
    AuditVerdict,
    CreatedNode,
    EnrolledNode,
    NodeLedger,
    Release,
)
from lepton.audit_report import ReportFiles, read_signed_report, write_report_files
from lepton.audit_verify import Verification, verify_report
from lepton.cluster import LocalCluster, NodePlan
from lepton.ledger_report import ledger_rows
from lepton_fl.config import FederationSpec, Member
from lepton_fl.crypto.release import ReleaseError, verify_release


@dataclass(frozen=True)
class Site:
    """A hospital as the API knows it: its tenant, its tenant admin's key, its node."""

    name: str
    tenant_id: str
    tenant_key: str
    node: EnrolledNode

    @property
    def member(self) -> Member:
        """The node as a run member: the Flower node id the coordinator registered."""
        return Member(name=self.name, node_id=int(self.node.flower_node_id))


def enroll_sites(
    platform: AdminClient,
    cluster: LocalCluster,
    plans: list[NodePlan],
    *,
    on_enrolled: Callable[[Site], object],
    display_names: Mapping[str, str] | None = None,
) -> dict[str, Site]:
    """Tenant, tenant-admin key and node for every plan, then every node's enrollment,
    hospitals in parallel; `on_enrolled` runs in the calling thread as each node is enrolled
    (to start it while the others enroll). `display_names` names each site's institution.

    Creating first and enrolling after keeps the quick writes from queueing behind
    enrollments, which hold the database's write lock while the SuperLink registers a key.
    """
    assert cluster.pki is not None
    pki = cluster.pki
    sites: dict[str, Site] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(plans))) as pool:
        names = display_names or {}
        created = list(
            pool.map(lambda plan: _create_site(platform, plan, names.get(plan.name, "")), plans)
        )

        def enroll(plan: NodePlan, site: tuple[str, str, CreatedNode]) -> Site:
            tenant_id, key, node = site
            public_key = pki.nodes[plan.name].public_key.read_text(encoding="utf-8")
            enrolled = platform.anonymous().enroll(node.enrollment_token, public_key)
            return Site(name=plan.name, tenant_id=tenant_id, tenant_key=key, node=enrolled)

        futures = [pool.submit(enroll, p, c) for p, c in zip(plans, created, strict=True)]
        for future in as_completed(futures):
            site = future.result()
            sites[site.name] = site
            on_enrolled(site)
    return {p.name: sites[p.name] for p in plans}


def _create_site(
    platform: AdminClient, plan: NodePlan, display_name: str
) -> tuple[str, str, CreatedNode]:
    """The platform admin creates the tenant and its admin's key; the tenant admin creates
    the node with its budget. Returns (tenant id, tenant-admin key, created node)."""
    tenant = platform.create_tenant(plan.name, display_name=display_name)
    key = platform.create_api_key(
        "tenant_admin", tenant_id=tenant.id, name=f"{plan.name} IT (lepton demo)"
    )
    node = platform.as_key(key).create_node(plan.name, epsilon_budget=plan.epsilon_budget)
    return tenant.id, key, node


def federation_definition(fed: FederationSpec) -> dict[str, Any]:
    """The body of `POST /federations` for the demo's federation spec (without members)."""
    body = fed.model_dump(mode="json")
    sa = fed.secure_aggregation
    body["secure_aggregation"] = {
        "enabled": sa.enabled,
        "threshold": sa.threshold,
        "neighbours": sa.neighbours,
    }
    return body


# -- after the run -----------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerCheck:
    """One node: the coordinator's ledger and how it reconciles with the node's own."""

    ledger: NodeLedger
    ok: bool
    mismatches: list[dict[str, Any]]


def reconcile_ledgers(
    platform: AdminClient, cluster: LocalCluster, sites: dict[str, Site]
) -> dict[str, LedgerCheck]:
    """Per node: the coordinator's ledger, reconciled with the rows of the node's own ledger
    (read read-only, as an auditor at the site would)."""
    checks = {}
    for name, site in sites.items():
        ledger = platform.node_ledger(site.node.id)
        verdict = platform.reconcile(site.node.id, ledger_rows(cluster.nodes[name].ledger_path))
        checks[name] = LedgerCheck(
            ledger=ledger,
            ok=verdict.ok,
            mismatches=[m.model_dump() for m in verdict.mismatches],
        )
    return checks


def epsilon_mismatch(node_epsilon: float, coordinator_epsilon: float) -> dict[str, Any] | None:
    """A mismatch entry when the node's and the coordinator's recomputed ε disagree."""
    if math.isclose(node_epsilon, coordinator_epsilon, rel_tol=1e-6, abs_tol=1e-9):
        return None
    return {
        "flower_run_id": "*",
        "round": 0,
        "problem": f"epsilon: the node's ledger gives {node_epsilon:.6g}, the coordinator's "
        f"{coordinator_epsilon:.6g}",
    }


@dataclass(frozen=True)
class ReleaseCheck:
    """A promoted release and whether its download verified offline."""

    release: Release
    verified: bool
    error: str | None


def publish_and_verify(
    platform: AdminClient, downloader: AdminClient, run_id: str, directory: Path
) -> ReleaseCheck:
    """Promote the run to a release (platform admin); a participating hospital downloads it
    and verifies it offline against the coordinator's published signing key."""
    release = platform.create_release(run_id)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.safetensors").write_bytes(downloader.download_model(release.id))
    (directory / "manifest.json").write_text(
        downloader.download_manifest(release.id), encoding="utf-8"
    )
    public_key = downloader.anonymous().signing_key()
    try:
        manifest, _weights = verify_release(directory, public_key)
    except ReleaseError as err:
        return ReleaseCheck(release, verified=False, error=f"[{err.code}] {err}")
    if manifest.get("model_digest") != release.model_digest:
        return ReleaseCheck(
            release,
            verified=False,
            error=f"the signed digest {manifest.get('model_digest')} is not the API's "
            f"{release.model_digest}",
        )
    return ReleaseCheck(release, verified=True, error=None)


def verify_audit(platform: AdminClient) -> AuditVerdict:
    """The coordinator recomputes its audit hash chain."""
    return platform.audit_verification()


@dataclass(frozen=True)
class AuditReportCheck:
    """The auditor's privacy report of a federation's run, and its offline verification."""

    files: ReportFiles
    verification: Verification
    entries: int
    membership_audit: dict[str, Any] | None = None  # the pooled result of the run's audit

    def as_summary(self) -> dict[str, Any]:
        return {
            **self.files.as_dict(),
            "verified": self.verification.ok,
            "checks": self.verification.checks,
            "entries": self.entries,
            "failures": self.verification.failures,
            "membership_audit": self.membership_audit,
        }


def audit_report(
    platform: AdminClient,
    directory: Path,
    *,
    federation_id: str,
    release_id: str | None,
) -> AuditReportCheck:
    """An auditor (a fresh read-only key) fetches the signed privacy report of the release
    (or of the federation, when the run made none), writes it as JSON, signature and page,
    and verifies the files offline against the coordinator's published key, as
    `lepton audit verify` does."""
    auditor = platform.as_key(platform.create_api_key("auditor", name="demo auditor"))
    if release_id is not None:
        signed = auditor.privacy_report(release_id=release_id)
    else:
        signed = auditor.privacy_report(federation_id=federation_id)
    files = write_report_files(signed, directory)
    report, signature = read_signed_report(files.json)
    result = verify_report(report, signature, platform.anonymous().signing_key())
    entries = sum(len(n.get("entries") or []) for n in report.get("nodes", []))
    return AuditReportCheck(files, result, entries, _pooled_membership_audit(report))


def _pooled_membership_audit(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The last audited run's pooled membership-inference result, with its members' count."""
    audits = [
        run["membership_audit"]
        for federation in report.get("federations", [])
        for run in federation.get("runs", [])
        if run.get("membership_audit") and run["membership_audit"].get("pooled")
    ]
    if not audits:
        return None
    audit = audits[-1]
    return {
        **audit["pooled"]["result"],
        "nodes": len(audit["nodes"]) + audit["nodes_other"],
        "confidence": audit["confidence"],
    }
