"""`lepton demo`: four hospitals, one TLS SuperLink, DP-SGD at every node.

Everything runs as separate OS processes on 127.0.0.1, exactly as in a deployment: the
coordinator (`lepton coordinator start`), and per hospital a node (`lepton node start`, a
trainer daemon plus a `flower-supernode` authenticated by the hospital's key). The demo
itself plays the platform admin (creates the PKI, registers the node keys, submits the run)
and, for comparison only, trains a model on each hospital's data alone.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from coordinator.fl.journal import JournalView, read_journal
from lepton.baseline import BaselineResult, local_only_baselines
from lepton.cluster import LocalCluster, NodePlan
from lepton.ledger_report import NodeLedgerReport, read_node_ledger
from lepton_fl.config import FederationSpec, Member, PrivacySpec, RunSpec, TrainingSpec
from lepton_fl.datasets import HEART_DISEASE_SITES
from lepton_fl.processes import ProcessError

FEDERATION = "heart-disease"
RUN_TIMEOUT_S = 170.0


@dataclass(frozen=True)
class DemoOptions:
    """What `lepton demo` was asked for."""

    rounds: int = 5
    target_epsilon: float = 3.0
    epsilon_budget: float = 8.0
    summary_path: Path | None = None
    workdir: Path | None = None


def federation_spec(opts: DemoOptions) -> FederationSpec:
    """The demo federation: UCI heart disease, a small MLP, DP-SGD at every hospital."""
    return FederationSpec(
        name=FEDERATION,
        task="heart_disease",
        rounds=opts.rounds,
        min_participants=3,
        privacy=PrivacySpec(
            target_epsilon=opts.target_epsilon, delta=1e-5, max_grad_norm=1.0, accountant="rdp"
        ),
        training=TrainingSpec(local_epochs=2, batch_size=16, learning_rate=0.1),
        seed=0,
    )


def demo_plans(opts: DemoOptions) -> list[NodePlan]:
    """One node per real hospital of the UCI heart-disease data."""
    return [
        NodePlan(
            name=site,
            task="heart_disease",
            partition=site,
            epsilon_budget=opts.epsilon_budget,
            federations=(FEDERATION,),
        )
        for site in HEART_DISEASE_SITES
    ]


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the whole demo; return (and optionally write) the summary."""
    started = time.monotonic()
    console = Console()
    if not console.is_terminal:  # CI logs, pipes: wide enough for the final table
        console = Console(width=120)
    fed = federation_spec(opts)
    with _workspace(opts.workdir) as root, LocalCluster(root, demo_plans(opts)) as cluster:
        console.print(f"[bold]Lepton FL demo[/] — workspace {root}")
        cluster.start()
        assert cluster.superlink is not None
        members = list(cluster.members())
        console.print(
            f"SuperLink on https://{cluster.superlink.settings.address} (TLS, SuperNode auth); "
            f"{len(members)} hospital nodes ready: " + ", ".join(m.name for m in members)
        )
        journal_path = cluster.journal_path(FEDERATION)
        run = RunSpec(federation=fed, members=tuple(members), journal_path=str(journal_path))
        baselines: dict[str, BaselineResult] = {}
        baseline_thread = threading.Thread(
            target=lambda: baselines.update(local_only_baselines(fed, HEART_DISEASE_SITES)),
            daemon=True,
        )
        baseline_thread.start()
        flower_run_id = cluster.submit(run)
        console.print(f"Run {flower_run_id} submitted: {fed.rounds} rounds of DP FedAvg")
        view = _follow(console, cluster, journal_path, fed, members)
        baseline_thread.join(timeout=120)
        ledgers = {
            m.name: read_node_ledger(
                cluster.nodes[m.name].ledger_path,
                fed,
                dataset_id=cluster.nodes[m.name].plan.dataset_id,
                budget=opts.epsilon_budget,
            )
            for m in members
        }
        summary = build_summary(fed, members, view, ledgers, baselines, time.monotonic() - started)
    _print_table(console, summary)
    if opts.summary_path is not None:
        opts.summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        console.print(f"Summary written to {opts.summary_path}")
    if view.failure:
        raise ProcessError(f"The run failed: {view.failure}", code="run_failed")
    return summary


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
    console: Console,
    cluster: LocalCluster,
    journal: Path,
    fed: FederationSpec,
    members: list[Member],
) -> JournalView:
    """Show live progress until the run ends; return what the journal says."""
    progress = Progress(
        TextColumn("[bold]rounds"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    task = progress.add_task("rounds", total=fed.rounds)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    seen_rounds = 0
    view = read_journal(journal)
    if not console.is_terminal:  # a log: one line per round instead of a live display
        while not view.finished:
            _check_deadline(deadline, journal)
            cluster.check_alive()
            time.sleep(0.25)
            view = read_journal(journal)
            rounds = view.of("round")
            for record in rounds[seen_rounds:]:
                console.print(_round_line(record, fed.rounds))
            seen_rounds = len(rounds)
        return view
    with Live(
        Group(progress, _status_table(view, members)),
        console=console,
        refresh_per_second=4,
    ) as live:
        while not view.finished:
            _check_deadline(deadline, journal)
            cluster.check_alive()
            time.sleep(0.25)
            view = read_journal(journal)
            progress.update(task, completed=len(view.of("round")))
            live.update(Group(progress, _status_table(view, members)))
    return view


def _check_deadline(deadline: float, journal: Path) -> None:
    if time.monotonic() > deadline:
        raise ProcessError(
            f"The run did not finish within {RUN_TIMEOUT_S:.0f} s; see the run journal "
            f"{journal} and the logs beside the coordinator and node directories.",
            code="timeout",
        )


def _status_table(view: JournalView, members: list[Member]) -> Table:
    table = Table(title="nodes", expand=False)
    for column in ("hospital", "status", "ε spent", "ε budget", "accuracy (global, pre-round)"):
        table.add_column(column)
    rounds = view.of("round")
    started = view.of("round_started")
    current = rounds[-1]["nodes"] if rounds else {}
    in_flight = len(started) > len(rounds)
    for m in members:
        node = current.get(m.name, {})
        charge = node.get("charge", {})
        status = "training" if in_flight else node.get("status", "waiting")
        pre = node.get("pre_round_eval", {})
        table.add_row(
            m.name,
            str(status),
            f"{charge['epsilon']:.2f}" if charge else "-",
            f"{charge['epsilon_budget']:.1f}" if charge else "-",
            f"{pre['accuracy']:.3f}" if pre else "-",
        )
    return table


def _round_line(record: dict[str, Any], total: int) -> str:
    parts = []
    for name, node in record["nodes"].items():
        eps = node.get("charge", {}).get("epsilon")
        parts.append(f"{name}={node['status']}" + (f" ε={eps:.2f}" if eps is not None else ""))
    return f"round {record['round']}/{total} ({record['seconds']:.1f} s): " + ", ".join(parts)


# -- summary -----------------------------------------------------------------------------


def build_summary(
    fed: FederationSpec,
    members: list[Member],
    view: JournalView,
    ledgers: dict[str, NodeLedgerReport],
    baselines: dict[str, BaselineResult],
    wall_seconds: float,
) -> dict[str, Any]:
    """The demo summary (a stable schema that later issues extend)."""
    evaluation = (view.of("evaluation") or [{"nodes": {}}])[-1]["nodes"]
    rounds = view.of("round")
    nodes = []
    for m in members:
        ledger = ledgers[m.name]
        final = evaluation.get(m.name, {})
        base = baselines.get(m.name)
        reported = [
            r["nodes"][m.name]["charge"]["epsilon"]
            for r in rounds
            if "charge" in r["nodes"].get(m.name, {})
        ]
        nodes.append(
            {
                "name": m.name,
                "node_id": m.node_id,
                "num_examples": ledger.num_examples,
                "epsilon": ledger.epsilon,
                "epsilon_budget": ledger.epsilon_budget,
                "epsilon_reported_to_coordinator": reported[-1] if reported else None,
                "history": ledger.history,
                "local_only": base.metrics() if base else None,
                "federated": {"accuracy": final.get("accuracy"), "roc_auc": final.get("roc_auc")},
            }
        )
    return {
        "federation": fed.name,
        "federation_digest": fed.digest(),
        "rounds_completed": len([r for r in rounds if r["participants"]]),
        "tls": True,
        "node_auth": True,
        "secure_aggregation": fed.secure_aggregation.enabled,
        "secagg": secagg_summary(fed, rounds),
        "delta": fed.privacy.delta,
        "accountant": fed.privacy.accountant,
        "target_epsilon": fed.privacy.target_epsilon,
        "nodes": nodes,
        "rounds": [
            {
                "round": r["round"],
                "seconds": r["seconds"],
                "participants": r["participants"],
                "train_loss": r["train_loss"],
            }
            for r in rounds
        ],
        "failure": view.failure,
        "wall_seconds": round(wall_seconds, 2),
    }


def secagg_summary(fed: FederationSpec, rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What secure aggregation did, round by round (None when it is off)."""
    if not fed.secure_aggregation.enabled:
        return None
    per_round = []
    for r in rounds:
        info = r.get("secagg", {})
        per_round.append(
            {
                "round": r["round"],
                "session": info.get("session"),
                "threshold": info.get("threshold"),
                "participants": info.get("participants", []),
                "dropouts": info.get("dropouts", []),
                "clipped_values": info.get("clipped_values"),
                "failure": info.get("failure"),
            }
        )
    thresholds = {p["threshold"] for p in per_round if p["threshold"] is not None}
    return {
        "protocol": "secagg+",
        "threshold": max(thresholds) if thresholds else fed.secure_aggregation.threshold,
        "modulus_bits": fed.secure_aggregation.modulus_bits,
        "rounds": per_round,
    }


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


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
    for column in (
        "hospital",
        "rows",
        "local-only acc",
        "federated acc",
        "local-only AUC",
        "federated AUC",
        "ε spent / budget",
    ):
        table.add_column(column, justify="right" if column != "hospital" else "left")
    for node in summary["nodes"]:
        local = node["local_only"] or {}
        fed = node["federated"]
        table.add_row(
            node["name"],
            str(node["num_examples"]),
            _fmt(local.get("accuracy")),
            _fmt(fed.get("accuracy")),
            _fmt(local.get("roc_auc")),
            _fmt(fed.get("roc_auc")),
            f"{node['epsilon']:.2f} / {node['epsilon_budget']:.1f}",
        )
    console.print(table)
    console.print(
        "local-only: the same model and DP-SGD settings trained on one hospital's rows alone. "
        f"Wall time {summary['wall_seconds']:.0f} s."
    )
