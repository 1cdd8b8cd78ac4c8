"""`lepton demo`: sector federations (by default four hospitals), one TLS SuperLink, DP-SGD
at every node, run through the admin API as real admins would.

`--sector hospital|bank|factory|text` runs one sector's federation (lepton/sectors.py);
`--sector all` runs all of them at the same time on one coordinator, each institution its own
tenant.

Everything runs as separate OS processes on 127.0.0.1, exactly as in a deployment: the
coordinator (`lepton coordinator start`: the SuperLink and the admin API), and per hospital a
node (`lepton node start`, a trainer daemon plus a `flower-supernode` authenticated by the
hospital's key). The demo creates the PKI and bootstraps a platform-admin key on the
coordinator host (`lepton coordinator create-admin-key`); everything else goes through the
admin API (lepton/demo_admin.py): tenants, nodes and their enrollment (the coordinator
registers their keys), the federation, the run and its progress, the ledger and its
reconciliation with every node's own, a signed release verified offline, the audit chain.
For comparison only, it also trains a model on each hospital's data alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from coordinator.api.settings import AdminSettings
from coordinator.fl.journal import JournalView, RoundRecord, SecAggRound, read_journal
from lepton.admin_client import AdminClient, AuditVerdict, RoundStatus, RunStatus
from lepton.baseline import BaselineResult, local_only_baselines
from lepton.cluster import LocalCluster, NodePlan
from lepton.demo_admin import (
    AuditReportCheck,
    LedgerCheck,
    ReleaseCheck,
    Site,
    audit_report,
    enroll_sites,
    epsilon_mismatch,
    federation_definition,
    publish_and_verify,
    reconcile_ledgers,
    verify_audit,
)
from lepton.ledger_report import NodeLedgerReport, read_node_ledger
from lepton.sectors import Sector, majority_rates, resolve_sectors
from lepton_fl.config import FederationSpec, Member
from lepton_fl.privacy.evaluation import evaluation_epsilon_share
from lepton_fl.processes import ProcessError
from lepton_fl.wire import EvalMetrics

POLL_S = 0.25


@dataclass(frozen=True)
class DemoOptions:
    """What `lepton demo` was asked for."""

    rounds: int | None = None  # None: each sector's own (`Sector.rounds`)
    target_epsilon: float = 3.0
    epsilon_budget: float = 8.0
    summary_path: Path | None = None
    workdir: Path | None = None
    sector: str = "hospital"


def demo_federation(sector: Sector, opts: DemoOptions) -> FederationSpec:
    """The federation the demo defines for `sector`: the rounds its hyperparameters were
    tuned for (`Sector.rounds`, as bench/utility.py measures them) unless `--rounds` names
    a number for every sector."""
    return sector.federation_spec(
        rounds=opts.rounds or sector.rounds, target_epsilon=opts.target_epsilon
    )


def demo_plans(sector: Sector, opts: DemoOptions) -> list[NodePlan]:
    """One node per site of the sector (a real hospital, a bank, a production line)."""
    return [
        NodePlan(
            name=site,
            task=sector.task,
            partition=site,
            epsilon_budget=opts.epsilon_budget,
            federations=(sector.federation,),
        )
        for site in sector.sites
    ]


@dataclass(frozen=True)
class AdminOutcome:
    """What the admin API said about the run and the checks after it."""

    base_url: str
    sites: dict[str, Site]
    run: RunStatus
    rounds: list[RoundStatus]
    ledgers: dict[str, LedgerCheck]
    release: ReleaseCheck | None
    audit: AuditVerdict
    report: AuditReportCheck | None = None


@dataclass
class _Tracked:
    """One sector's federation and its run, as the demo follows it."""

    sector: Sector
    fed: FederationSpec
    plans: list[NodePlan]
    members: list[Member]
    names: dict[str, str]  # admin node id -> node name
    run: RunStatus
    journal: Path
    deadline: float
    federation_id: str = ""
    rounds: list[RoundStatus] = field(default_factory=list)
    baselines: dict[str, BaselineResult] = field(default_factory=dict)


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the whole demo; return (and optionally write) the summary.

    One sector: the summary of its federation. Several (``--sector all``): their federations
    run at the same time on one coordinator, each institution its own tenant, and the summary
    has one entry per sector under ``sectors``.
    """
    started = time.monotonic()
    console = Console()
    if not console.is_terminal:  # CI logs, pipes: wide enough for the final table
        console = Console(width=140)
    sectors = resolve_sectors(opts.sector)
    plans = {s.key: demo_plans(s, opts) for s in sectors}
    every_plan = [p for ps in plans.values() for p in ps]
    display_names = {site: name for s in sectors for site, name in s.institutions.items()}
    with _workspace(opts.workdir) as root, LocalCluster(root, every_plan) as cluster:
        console.print(f"[bold]Lepton FL demo[/] — workspace {root}")
        superlink = cluster.start_coordinator()
        cluster.wait_for_api()
        admin_key = cluster.create_admin_key()
        with AdminClient.connect(cluster.api_url) as anonymous:
            platform = anonymous.as_key(admin_key)
            console.print(
                f"Admin API on {platform.base_url}; platform-admin key bootstrapped with "
                "`lepton coordinator create-admin-key`"
            )
            sites = enroll_sites(
                platform,
                cluster,
                every_plan,
                on_enrolled=lambda site: cluster.start_node(site.name, site.member),
                display_names=display_names,
            )
            cluster.wait_for_nodes()
            console.print(
                f"SuperLink on https://{superlink.settings.address} (TLS, SuperNode auth); "
                f"{len(sites)} nodes enrolled through the API (one tenant each) and ready"
            )
            concurrent = len(sectors)
            tracked = [
                _start(console, platform, root, s, plans[s.key], sites, opts, concurrent)
                for s in sectors
            ]
            _follow(console, cluster, platform, tracked)
            outcomes = [
                _after_run(platform, anonymous, cluster, root, t, sites, opts) for t in tracked
            ]
            audit = verify_audit(platform)
            reports = [
                audit_report(
                    platform,
                    root / "audit" / t.fed.name,
                    federation_id=t.federation_id,
                    release_id=None if release is None else release.release.id,
                )
                for t, (_, _, release) in zip(tracked, outcomes, strict=True)
            ]
        summaries = [
            build_summary(
                t.fed,
                t.members,
                read_journal(t.journal),
                ledgers,
                t.baselines,
                time.monotonic() - started,
                AdminOutcome(
                    platform.base_url,
                    {p.name: sites[p.name] for p in t.plans},
                    t.run,
                    t.rounds,
                    checks,
                    release,
                    audit,
                    report,
                ),
                sector=t.sector,
            )
            for t, (ledgers, checks, release), report in zip(
                tracked, outcomes, reports, strict=True
            )
        ]
    for one in summaries:
        _print_table(console, one)
    summary = summaries[0] if len(summaries) == 1 else _combined(summaries, started)
    if opts.summary_path is not None:
        opts.summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        console.print(f"Summary written to {opts.summary_path}")
    failures = [f"{s['federation']}: {s['failure']}" for s in summaries if s["failure"]]
    if failures:
        raise ProcessError("The run failed: " + "; ".join(failures), code="run_failed")
    broken = [f"{s['federation']}: {b}" for s in summaries for b in _failed_checks(s)]
    if broken:
        raise ProcessError(
            "The run finished, but " + "; ".join(broken) + ". See the lines above and the summary.",
            code="verification_failed",
        )
    return summary


def _start(
    console: Console,
    platform: AdminClient,
    root: Path,
    sector: Sector,
    plans: list[NodePlan],
    sites: dict[str, Site],
    opts: DemoOptions,
    concurrent: int,
) -> _Tracked:
    """Create the sector's federation and start its run (and its local-only baselines)."""
    fed = demo_federation(sector, opts)
    federation = platform.create_federation(
        federation_definition(fed), [sites[p.name].node.id for p in plans]
    )
    run = platform.start_run(federation.id)
    console.print(
        f"{fed.name}: run {run.id} started through the API: {fed.rounds} rounds of DP FedAvg "
        f"with SecAgg+ over {len(plans)} {sector.site_kind}s ({sector.note})"
    )
    journal = AdminSettings(data_dir=root / "coordinator").runs_dir / run.id / "journal.jsonl"
    tracked = _Tracked(
        sector=sector,
        fed=fed,
        plans=plans,
        members=[sites[p.name].member for p in plans],
        names={sites[p.name].node.id: p.name for p in plans},
        run=run,
        journal=journal,
        federation_id=federation.id,
        # federations that share the host's cores take longer each
        deadline=time.monotonic() + sector.run_timeout_s * concurrent,
    )
    if sector.local_baselines:
        threading.Thread(
            target=lambda: tracked.baselines.update(
                local_only_baselines(fed, [p.name for p in plans])
            ),
            daemon=True,
        ).start()
    return tracked


def _after_run(
    platform: AdminClient,
    anonymous: AdminClient,
    cluster: LocalCluster,
    root: Path,
    t: _Tracked,
    sites: dict[str, Site],
    opts: DemoOptions,
) -> tuple[dict[str, NodeLedgerReport], dict[str, LedgerCheck], ReleaseCheck | None]:
    """Read every node's ledger, reconcile it with the coordinator's, publish and verify a
    release of a finished run (downloaded by the first site's tenant)."""
    if t.sector.local_baselines:
        deadline = time.monotonic() + 120
        while len(t.baselines) < len(t.plans) and time.monotonic() < deadline:
            time.sleep(POLL_S)
    ledgers = {
        m.name: read_node_ledger(
            cluster.nodes[m.name].ledger_path,
            t.fed,
            dataset_id=cluster.nodes[m.name].plan.dataset_id,
            budget=opts.epsilon_budget,
        )
        for m in t.members
    }
    checks = reconcile_ledgers(platform, cluster, {p.name: sites[p.name] for p in t.plans})
    release = None
    if t.run.state == "finished":
        first = sites[t.plans[0].name]
        release = publish_and_verify(
            platform, anonymous.as_key(first.tenant_key), t.run.id, root / "downloads" / first.name
        )
    return ledgers, checks, release


def _combined(summaries: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """The summary of several sector federations run at once on one coordinator."""
    failed = [f"{s['federation']}: {s['failure']}" for s in summaries if s["failure"]]
    return {
        "sectors": {s["sector"]: s for s in summaries},
        "federations": [s["federation"] for s in summaries],
        "failure": "; ".join(failed) or None,
        "wall_seconds": round(time.monotonic() - started, 2),
        "audit": summaries[0]["audit"],
    }


@contextlib.contextmanager
def _workspace(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="lepton-demo-") as tmp:
        yield Path(tmp)


# -- progress ----------------------------------------------------------------------------


def _follow(
    console: Console, cluster: LocalCluster, api: AdminClient, runs: list[_Tracked]
) -> None:
    """Show progress until the API says every run ended. The runs' state and rounds come
    from the API; the per-node detail (ε charged) from the run journals.
    One run on a terminal: a live table; otherwise one line per round."""
    single = runs[0] if len(runs) == 1 else None
    progress = Progress(
        TextColumn("[bold]rounds"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    task = progress.add_task("rounds", total=runs[0].fed.rounds)
    live = None
    if single is not None and console.is_terminal:
        table = _status_table(single.run, read_journal(single.journal), single.members)
        live = Live(Group(progress, table), console=console)
    prefix = len(runs) > 1
    with live if live is not None else contextlib.nullcontext():
        while True:
            for t in runs:
                if len(t.rounds) < t.run.rounds_completed or t.run.ended:
                    fresh = api.rounds(t.run.id)
                    if live is None:  # a log: one line per round instead of a live display
                        view = read_journal(t.journal)
                        for r in fresh[len(t.rounds) :]:
                            line = _round_line(r, t.fed.rounds, t.names, view)
                            console.print(f"{t.fed.name} {line}" if prefix else line)
                    t.rounds = fresh
            if live is not None and single is not None:
                progress.update(task, completed=len(single.rounds))
                table = _status_table(single.run, read_journal(single.journal), single.members)
                live.update(Group(progress, table))
            if all(t.run.ended for t in runs):
                return
            for t in runs:
                if not t.run.ended:
                    _check_deadline(t)
            cluster.check_alive()
            time.sleep(POLL_S)
            for t in runs:
                if not t.run.ended:
                    t.run = api.run(t.run.id)


def _check_deadline(t: _Tracked) -> None:
    if time.monotonic() > t.deadline:
        raise ProcessError(
            f"Run {t.run.id} of {t.fed.name} did not finish in time (the API says "
            f"{t.run.state}, {t.run.rounds_completed}/{t.run.rounds_planned} rounds); see the "
            f"run journal {t.journal} and the logs beside the coordinator and node directories.",
            code="timeout",
        )


def _status_table(run: RunStatus, view: JournalView, members: list[Member]) -> Table:
    table = Table(title="nodes", expand=False)
    for column in ("hospital", "status", "ε spent", "ε budget"):
        table.add_column(column)
    rounds = view.rounds
    current = rounds[-1].nodes if rounds else {}
    in_flight = run.state == "running" and run.rounds_completed < run.rounds_planned
    for m in members:
        node = current.get(m.name)
        charge = node.charge if node is not None else None
        status = "training" if in_flight else node.status if node is not None else "waiting"
        table.add_row(
            m.name,
            status,
            f"{charge.epsilon:.2f}" if charge else "-",
            f"{charge.epsilon_budget:.1f}" if charge else "-",
        )
    return table


def _round_line(r: RoundStatus, total: int, names: dict[str, str], view: JournalView) -> str:
    record = next((j for j in view.rounds if j.round == r.round), None)
    detail = record.nodes if record is not None else {}
    parts = []
    for node_id in r.participants:
        name = names.get(node_id, node_id)
        node = detail.get(name)
        eps = node.charge.epsilon if node is not None and node.charge is not None else None
        parts.append(f"{name}=ok" + (f" ε={eps:.2f}" if eps is not None else ""))
    parts += [f"{names.get(n, n)}=refused ({why})" for n, why in r.refusals.items()]
    seconds = f" ({r.seconds:.1f} s)" if r.seconds is not None else ""
    return f"round {r.round}/{total}{seconds}: " + ", ".join(parts)


# -- summary -----------------------------------------------------------------------------


def build_summary(
    fed: FederationSpec,
    members: list[Member],
    view: JournalView,
    ledgers: dict[str, NodeLedgerReport],
    baselines: dict[str, BaselineResult],
    wall_seconds: float,
    admin: AdminOutcome,
    *,
    sector: Sector | None = None,
) -> dict[str, Any]:
    """The demo summary (a stable schema that later issues extend).

    The run's state, rounds and the coordinator's ledger come from the admin API; the final
    per-node evaluation and the per-round secure-aggregation detail from the run journal.
    """
    last_evaluation = view.evaluation
    evaluation = last_evaluation.nodes if last_evaluation is not None else {}
    # the baseline a useful model must beat: always answering the most frequent class of the
    # held-out rows (the demo's own data, split as every node splits it)
    majority = majority_rates(sector) if sector is not None else None
    names = {site.node.id: name for name, site in admin.sites.items()}
    nodes = []
    reconciliation: dict[str, Any] = {}
    for m in members:
        ledger = ledgers[m.name]
        check = admin.ledgers[m.name]
        final = evaluation.get(m.name)
        released = final.charge if final is not None else None
        base = baselines.get(m.name)
        mismatches = list(check.mismatches)
        # both ledgers hold the training rounds and the evaluation's DP release
        disagreement = epsilon_mismatch(ledger.epsilon, check.ledger.epsilon_spent)
        if disagreement is not None:
            mismatches.append(disagreement)
        reconciliation[m.name] = {"ok": check.ok and not mismatches, "mismatches": mismatches}
        nodes.append(
            {
                "name": m.name,
                "node_id": m.node_id,
                "admin_node_id": admin.sites[m.name].node.id,
                "tenant_id": admin.sites[m.name].tenant_id,
                "num_examples": ledger.num_examples,
                "epsilon": ledger.epsilon,
                "epsilon_training": ledger.epsilon_training,
                "epsilon_evaluation": ledger.epsilon - ledger.epsilon_training,
                "evaluation_noise_multiplier": released.noise_multiplier if released else None,
                "epsilon_coordinator_ledger": check.ledger.epsilon_spent,
                "epsilon_budget": ledger.epsilon_budget,
                "epsilon_reported_to_coordinator": check.ledger.epsilon_reported,
                "history": ledger.history,
                "local_only": base.metrics() if base else None,
                "majority_rate": majority.per_site.get(m.name) if majority else None,
                "federated": federated_figures(final.evaluation if final is not None else None),
            }
        )
    run = admin.run
    failure = run.failure or (None if run.state == "finished" else f"the run was {run.state}")
    release = admin.release
    return {
        "sector": sector.key if sector else None,
        "site_kind": sector.site_kind if sector else "site",
        "task": fed.task,
        "model": fed.model.name,
        "federation": fed.name,
        "federation_digest": fed.digest(),
        "rounds_completed": len([r for r in admin.rounds if r.participants]),
        "tls": True,
        "node_auth": True,
        "secure_aggregation": fed.secure_aggregation.enabled,
        "secagg": secagg_summary(fed, view.rounds),
        "delta": fed.privacy.delta,
        "accountant": fed.privacy.accountant,
        "target_epsilon": fed.privacy.target_epsilon,
        "evaluation_epsilon": evaluation_epsilon_share(
            fed.privacy.target_epsilon, fed.privacy.evaluation_epsilon
        ),
        "nodes": nodes,
        "majority_rate": majority.rate if majority else None,
        "federation_metrics": (
            last_evaluation.aggregate.as_dict()
            if last_evaluation is not None and last_evaluation.aggregate is not None
            else None
        ),
        "rounds": [
            {
                "round": r.round,
                "seconds": r.seconds,
                "participants": [names.get(p, p) for p in r.participants],
            }
            for r in admin.rounds
        ],
        "failure": failure,
        "wall_seconds": round(wall_seconds, 2),
        "admin_api": admin.base_url,
        "run": {"id": run.id, "state": run.state, "flower_run_id": run.flower_run_id},
        "ledger_reconciliation": {
            "ok": all(r["ok"] for r in reconciliation.values()),
            "nodes": reconciliation,
        },
        "release": None
        if release is None
        else {
            "id": release.release.id,
            "version": release.release.version,
            "model_digest": release.release.model_digest,
            "verified": release.verified,
            "error": release.error,
        },
        "audit": {
            "ok": admin.audit.ok,
            "events": admin.audit.events_checked,
            "first_broken_seq": admin.audit.first_broken_seq,
            "reason": admin.audit.reason,
        },
        "audit_report": None if admin.report is None else admin.report.as_summary(),
    }


def secagg_summary(fed: FederationSpec, rounds: list[RoundRecord]) -> dict[str, Any] | None:
    """What secure aggregation did, round by round (None when it is off)."""
    if not fed.secure_aggregation.enabled:
        return None
    per_round: list[dict[str, Any]] = []
    for r in rounds:
        info = r.secagg or SecAggRound()
        per_round.append(
            {
                "round": r.round,
                "session": info.session,
                "threshold": info.threshold,
                "participants": list(info.participants),
                "dropouts": list(info.dropouts),
                "clipped_values": info.clipped_values,
                "failure": None if info.failure is None else dataclasses.asdict(info.failure),
            }
        )
    thresholds = {p["threshold"] for p in per_round if p["threshold"] is not None}
    return {
        "protocol": "secagg+",
        "threshold": max(thresholds) if thresholds else fed.secure_aggregation.threshold,
        "modulus_bits": fed.secure_aggregation.modulus_bits,
        "rounds": per_round,
    }


EVAL_FIELDS = ("accuracy", "precision", "recall", "f1", "roc_auc", "loss", "confusion")
"""What the summary shows of each node's final evaluation (`federated`)."""


def federated_figures(evaluation: EvalMetrics | None) -> dict[str, Any]:
    """A node's evaluation of the final model as the summary shows it (`EVAL_FIELDS`; all
    ``None`` when it sent none)."""
    if evaluation is None:
        return dict.fromkeys(EVAL_FIELDS)
    figures: dict[str, Any] = {key: getattr(evaluation, key) for key in EVAL_FIELDS}
    if evaluation.confusion is not None:
        figures["confusion"] = [list(row) for row in evaluation.confusion]
    return figures


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


def _metric_cells(metrics: dict[str, Any]) -> list[str]:
    return [_fmt(metrics.get(key)) for key in ("precision", "recall", "f1")]


def _federation_lines(summary: dict[str, Any]) -> list[str]:
    """The federation's figures: examples-weighted means and the pooled confusion matrix."""
    agg = summary.get("federation_metrics")
    if not agg:
        return ["Federation metrics: none (no node reported a full evaluation)"]
    if "error" in agg:
        return [f"[bold red]Federation metrics not combined[/]: {agg['error']}"]
    lines = [
        f"Federation ({agg['num_examples']} held-out rows, weighted by rows): "
        f"accuracy {_fmt(agg['accuracy'])}, precision {_fmt(agg['precision'])}, "
        f"recall {_fmt(agg['recall'])}, F1 {_fmt(agg['f1'])}, "
        + (
            "ROC-AUC not released (it stays at the nodes)"
            if agg["roc_auc"] is None and len(agg["roc_auc_skipped"]) == len(agg["nodes"])
            else f"ROC-AUC {_fmt(agg['roc_auc'])}"
            + (
                f" (AUC undefined at {', '.join(agg['roc_auc_skipped'])})"
                if agg["roc_auc_skipped"]
                else ""
            )
        ),
        f"Pooled confusion (rows true, columns predicted): {agg['confusion']}; pooled "
        f"precision {_fmt(agg['pooled_precision'])}, recall {_fmt(agg['pooled_recall'])}, "
        f"F1 {_fmt(agg['pooled_f1'])}",
    ]
    if agg.get("left_out"):
        lines.append(f"Left out (no full evaluation): {', '.join(agg['left_out'])}")
    return lines


def _print_table(console: Console, summary: dict[str, Any]) -> None:
    table = Table(
        title=f"{summary['federation']}: {summary['rounds_completed']} rounds, "
        f"δ={summary['delta']:g}, {summary['accountant'].upper()} accountant, "
        + (
            f"SecAgg+ (threshold {summary['secagg']['threshold']})"
            if summary["secagg"]
            else "no secure aggregation"
        )
    )
    kind = summary.get("site_kind", "hospital")
    for column in (
        kind,
        "rows",
        "local-only acc",
        "federated acc",
        "majority rate",
        "local-only AUC",
        "federated AUC",
        "fed precision",
        "fed recall",
        "fed F1",
        "ε spent / budget",
        "ε coordinator",
    ):
        table.add_column(column, justify="right" if column != kind else "left")
    for node in summary["nodes"]:
        local = node["local_only"] or {}
        fed = node["federated"]
        table.add_row(
            node["name"],
            str(node["num_examples"]),
            _fmt(local.get("accuracy")),
            _fmt(fed.get("accuracy")),
            _fmt(node.get("majority_rate")),
            _fmt(local.get("roc_auc")),
            _fmt(fed.get("roc_auc")),
            *_metric_cells(fed),
            f"{node['epsilon']:.2f} / {node['epsilon_budget']:.1f}",
            f"{node['epsilon_coordinator_ledger']:.2f}",
        )
    agg = summary.get("federation_metrics") or {}
    if "accuracy" in agg:
        table.add_row(
            "federation (weighted)",
            "-",  # the rows column counts training rows; the evaluation's are held out
            "-",
            _fmt(agg["accuracy"]),
            _fmt(summary.get("majority_rate")),
            "-",
            _fmt(agg["roc_auc"]),
            *_metric_cells(agg),
            "",
            "",
        )
    console.print(table)
    for line in _federation_lines(summary):
        console.print(line)
    console.print(
        f"local-only: the same model and DP-SGD settings trained on one {kind}'s rows alone; "
        "majority rate: the accuracy of always answering the most frequent class of the "
        "held-out rows. "
        f"Wall time {summary['wall_seconds']:.0f} s."
    )
    for line in _epsilon_split_lines(summary):
        console.print(line)
    for line in _check_lines(summary):
        console.print(line)


def _epsilon_split_lines(summary: dict[str, Any]) -> list[str]:
    """How much epsilon went to training and how much to the evaluation release, per node."""
    nodes = [n for n in summary["nodes"] if "epsilon_training" in n]
    if not nodes:
        return []
    parts = ", ".join(
        f"{n['name']} {n['epsilon_training']:.3f} + {n['epsilon_evaluation']:.3f}"
        + (
            f" (σ={n['evaluation_noise_multiplier']:.2f})"
            if n.get("evaluation_noise_multiplier")
            else ""
        )
        for n in nodes
    )
    share = summary.get("evaluation_epsilon")
    reserved = (
        f"; the spec reserves {share:.3g} of its target ε {summary['target_epsilon']:g} for it"
        if share is not None and "target_epsilon" in summary
        else ""
    )
    return [
        f"ε training + evaluation per node: {parts}{reserved}. Federated metrics are DP "
        "releases: noised confusion counts; loss and ROC-AUC stay at the nodes."
    ]


def _check_lines(summary: dict[str, Any]) -> list[str]:
    """One line each for the ledger, the release and the audit chain; every problem named."""
    reconciliation = summary["ledger_reconciliation"]
    nodes = reconciliation["nodes"]
    if reconciliation["ok"]:
        lines = [f"Ledger: coordinator and all {len(nodes)} nodes agree"]
    else:
        problems = [
            f"{name}: "
            + "; ".join(
                f"run {m['flower_run_id']} round {m['round']}: {m['problem']}"
                for m in r["mismatches"]
            )
            for name, r in nodes.items()
            if not r["ok"]
        ]
        lines = ["[bold red]Ledger MISMATCH[/] — " + " | ".join(problems)]
    release = summary["release"]
    if release is None:
        lines.append("Release: none (the run did not finish)")
    elif release["verified"]:
        lines.append(
            f"Release v{release['version']} signed and verified "
            f"(model {release['model_digest'][:19]}…)"
        )
    else:
        lines.append(
            f"[bold red]Release v{release['version']} FAILED verification[/]: {release['error']}"
        )
    audit = summary["audit"]
    if audit["ok"]:
        lines.append(f"Audit chain: {audit['events']} events, intact")
    else:
        lines.append(
            f"[bold red]Audit chain BROKEN[/] at row {audit['first_broken_seq']}: {audit['reason']}"
        )
    report = summary.get("audit_report")
    if report is not None and report["verified"]:
        lines.append(
            f"Privacy report verified offline by lepton audit verify: signature, audit "
            f"checkpoint, {report['entries']} ε charges recomputed with Opacus and dp-accounting "
            f"({report['html']})"
        )
    elif report is not None:
        lines.append(f"[bold red]Privacy report FAILED verification[/]: {report['failures']}")
    membership = None if report is None else report.get("membership_audit")
    if membership is not None and membership["auc"] is not None:
        lines.append(
            f"Membership-inference audit of the final model (DP release, {membership['nodes']} "
            f"nodes pooled): AUC {membership['auc']:.3f} [{membership['ci_low']:.3f}, "
            f"{membership['ci_high']:.3f}] ({membership['confidence']:.0%}; 0.5 = nothing "
            "learned about members)"
        )
    return lines


def _failed_checks(summary: dict[str, Any]) -> list[str]:
    failed = []
    if not summary["ledger_reconciliation"]["ok"]:
        failed.append("the coordinator's ledger does not reconcile with every node's own")
    release = summary["release"]
    if release is not None and not release["verified"]:
        failed.append(f"release v{release['version']} did not verify")
    if not summary["audit"]["ok"]:
        failed.append("the audit chain is broken")
    report = summary.get("audit_report")
    if report is not None and not report["verified"]:
        failed.append("the privacy report did not verify")
    return failed
