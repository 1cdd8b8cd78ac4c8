"""Per-round orchestration overhead with 4 hospital nodes: our path beside Flower's default.

overhead = round wall time (ServerApp: push train messages -> all replies in, aggregated)
           - the slowest node's DP-SGD training time in that round,
median over rounds 2.. (round 1 carries first-use costs). Three clusters run one after the
other in the same invocation, on the same federation and data:

* ours: `lepton node start` (the trainer's executor claims the SuperNode's tasks, packed
  messages, adaptive waits);
* ours-file: the same with the SuperLink's state in a SQLite file instead of Flower's
  in-memory state (`bench/hooks/sitecustomize.py`: what the file would cost per round; the
  product keeps the state in memory and registers the node keys again at every start);
* ours-poll: the same with Flower's own `flower-superlink`, whose pulls are answered at once
  (`bench/hooks/sitecustomize.py`), instead of `coordinator.superlink_launcher`'s long polls:
  what they buy;
* ours-unscoped: the same with every request through all eight of Flower's middleware layers
  (`bench/hooks/sitecustomize.py`), instead of only those that act on it
  (`coordinator.superlink_middleware`): what scoping them saves;
* stock: Flower's default path (`bench/stock_flower.py`): `flower-supernode --isolation
  subprocess` with Flower's own waits, one spawned `flwr-clientapp` per message that installs
  the bundle and builds the node's trainer before answering.

For each it prints the rounds, the median overhead and the median stages of the last reply
of each round (both sides' clocks on this host), then the ratios stock / ours, ours-poll /
ours and ours-unscoped / ours, and one JSON object on the last line. After our run it samples
an idle node's CPU (``--idle-s``), and at the end it runs our path (or each
``--curve-path``) again with 4, 10 and 20 breast-cancer sites (``--curve``) for the overhead
against the node count.
    .venv/bin/python bench/round_overhead.py [--rounds 6] [--only PATH ...] [--curve 4 10 20]
        [--curve-path ours ours-poll ours-unscoped]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from stock_flower import (
    HOOKS,
    OUR_STAGES,
    STOCK_STAGES,
    StockCluster,
    breakdown,
    our_stage_rows,
    stock_stage_rows,
)

from coordinator.fl.journal import RoundRecord
from lepton.cluster import LocalCluster, NodePlan
from lepton_demo.heart_disease import HEART_DISEASE_SITES
from lepton_fl.config import (
    FederationSpec,
    PrivacySpec,
    RunSpec,
    SecureAggregationSpec,
    TrainingSpec,
)

GOAL_S = 1.0
CURVE_GOAL_S = 3.0  # 20 nodes on one SuperLink
IDLE_GOAL = 0.02  # of one core, per idle node
PATHS = ("ours", "ours-file", "ours-poll", "ours-unscoped", "stock")
VARIANTS = {
    "ours-poll": ("poll_over_ours_overhead", "long polls (ours-poll: pulls answered at once)"),
    "ours-unscoped": (
        "unscoped_over_ours_overhead",
        "scoped middlewares (ours-unscoped: all eight layers on every request)",
    ),
}
"""Our path beside one part of it undone: the summary key and what the ratio shows."""

QUIET_AFTER_S = 15.0  # past the SuperNode's and the executor's 10 s busy windows


def federation(rounds: int, *, task: str, nodes: int) -> FederationSpec:
    """Plain FedAvg over every node: one train wave per round (bench/secagg.py compares the
    secure round, two waves plus a setup, with this one)."""
    return FederationSpec(
        name="bench",
        task=task,
        rounds=rounds,
        min_participants=nodes,
        privacy=PrivacySpec(target_epsilon=3.0),
        training=TrainingSpec(local_epochs=2, batch_size=16, learning_rate=0.1),
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )


def hospital_plans() -> list[NodePlan]:
    """The 4 heart-disease hospitals."""
    return [
        NodePlan(site, "heart_disease", site, 50.0, ("bench",), require_secure_aggregation=False)
        for site in HEART_DISEASE_SITES
    ]


def site_plans(n: int) -> list[NodePlan]:
    """``n`` breast-cancer sites (``site-i-of-n``), for the node-count curve."""
    return [
        NodePlan(
            f"site-{i}",
            "breast_cancer",
            f"site-{i}-of-{n}",
            50.0,
            ("bench",),
            require_secure_aggregation=False,
        )
        for i in range(n)
    ]


def run_path(
    path: str,
    rounds: int,
    *,
    plans: list[NodePlan] | None = None,
    task: str = "heart_disease",
    idle_s: float = 0.0,
) -> dict[str, Any]:
    """One cluster on ``path`` ("ours" or "stock"), one run; its rounds and stages, and (with
    ``idle_s``) the nodes' CPU share while idle after the run."""
    plans = plans or hospital_plans()
    kind = StockCluster if path == "stock" else LocalCluster
    hook = {
        "ours-file": "file_state",
        "ours-poll": "polled_superlink",
        "ours-unscoped": "unscoped_middleware",
    }.get(path)
    env = {"PYTHONPATH": str(HOOKS), "LEPTON_BENCH_HOOK": hook} if hook else None
    with (
        tempfile.TemporaryDirectory(prefix=f"lepton-bench-{path}-") as tmp,
        kind(Path(tmp), plans, coordinator_env=env) as cluster,
    ):
        cluster.start()
        journal = cluster.journal_path("bench")
        fed = federation(rounds, task=task, nodes=len(plans))
        run = RunSpec(federation=fed, members=cluster.members(), journal_path=str(journal))
        cluster.submit(run)
        view = cluster.wait_for_run(journal, timeout=300 + 60 * rounds)
        if view.failure:
            raise SystemExit(f"bench run ({path}) failed: {view.failure}")
        if path == "stock":
            stages = breakdown(view.rounds, stock_stage_rows(cluster), STOCK_STAGES)
        else:
            stages = breakdown(view.rounds, our_stage_rows(cluster), OUR_STAGES)
        idle = idle_share(cluster, idle_s) if idle_s > 0 else None
    rows = [round_row(r) for r in view.rounds]
    steady = rows[1:] if len(rows) > 1 else rows
    return {
        "rounds": rows,
        "median_round_wall_s": round(statistics.median(r["wall_s"] for r in steady), 3),
        "median_overhead_s": round(statistics.median(r["overhead_s"] for r in steady), 3),
        "stages_s": stages,
        "nodes": len(plans),
        "idle_core_share_per_node": idle,
    }


def _descendants(root: int) -> set[int]:
    """``root`` and every process below it (the node's SuperNode is its trainer's child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _cpu_seconds(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def idle_share(cluster: LocalCluster, seconds: float) -> float:
    """Mean CPU share of one core per node (trainer, executor and SuperNode) over
    ``seconds``, measured `QUIET_AFTER_S` after the run, when no task is coming."""
    time.sleep(QUIET_AFTER_S)
    pids = set().union(*(_descendants(n.process.pid) for n in cluster.nodes.values()))
    before, started = _cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)
    used = _cpu_seconds(pids) - before
    return round(used / (time.monotonic() - started) / len(cluster.nodes), 4)


def round_row(record: RoundRecord) -> dict[str, float]:
    """A round's wall time, its slowest training and the overhead (plain rounds report
    each node's timings)."""
    nodes = record.nodes.values()
    trained = [n.train_seconds for n in nodes if n.train_seconds is not None]
    if not trained:
        raise SystemExit(f"bench round {record.round}: no node reported its timings")
    return {
        "round": record.round,
        "wall_s": round(record.seconds, 3),
        "slowest_train_s": round(max(trained), 3),
        "overhead_s": round(record.seconds - max(trained), 3),
    }


def print_path(path: str, result: dict[str, Any]) -> None:
    """One path's rounds, median overhead and stages."""
    print(f"== {path} ==")
    print(f"{'round':>5} {'wall s':>8} {'slowest train s':>16} {'overhead s':>11}")
    for r in result["rounds"]:
        print(
            f"{r['round']:>5} {r['wall_s']:>8.2f} {r['slowest_train_s']:>16.2f} "
            f"{r['overhead_s']:>11.2f}"
        )
    print(f"median overhead (rounds 2..): {result['median_overhead_s']:.2f} s")
    print("median stages of each round's last reply (rounds 2..):")
    for label, seconds in result["stages_s"].items():
        print(f"  {label:<52} {seconds:>7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--only", choices=PATHS, nargs="+", help="run these paths only (ratios among them)"
    )
    parser.add_argument(
        "--curve",
        type=int,
        nargs="*",
        default=[4, 10, 20],
        help="node counts for our path's overhead curve (breast-cancer sites); none: skip",
    )
    parser.add_argument(
        "--curve-path",
        choices=[p for p in PATHS if p != "stock"],
        nargs="+",
        default=["ours"],
        help="the curve's paths (each node count on each path, one after the other)",
    )
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle CPU sample (0: skip)")
    args = parser.parse_args()
    results = {
        path: run_path(path, args.rounds, idle_s=args.idle_s if path == "ours" else 0.0)
        for path in PATHS
        if args.only is None or path in args.only
    }
    for path, result in results.items():
        print_path(path, result)
    summary: dict[str, Any] = {"bench": "round_overhead", "nodes": 4, "goal_overhead_s": GOAL_S}
    summary.update(results)
    if "ours" in results and "ours-file" in results:
        summary["sqlite_state_cost_s"] = round(
            results["ours-file"]["median_round_wall_s"] - results["ours"]["median_round_wall_s"],
            3,
        )
        print(
            f"a SQLite state file would cost {summary['sqlite_state_cost_s']:.2f} s per round "
            f"(ours, in memory: {results['ours']['median_overhead_s']:.2f} s overhead; with the "
            f"file {results['ours-file']['median_overhead_s']:.2f} s)"
        )
    if "ours" in results and "stock" in results:
        ours, stock = results["ours"], results["stock"]
        for key in ("median_round_wall_s", "median_overhead_s"):
            summary[f"stock_over_ours_{key.removeprefix('median_')}"] = round(
                stock[key] / ours[key], 2
            )
        print(
            f"stock / ours: round wall {summary['stock_over_ours_round_wall_s']}x, overhead "
            f"{summary['stock_over_ours_overhead_s']}x; ours {ours['median_overhead_s']:.2f} s "
            f"against the goal of <= {GOAL_S} s"
        )
    for variant, (key, what) in VARIANTS.items():
        if "ours" in results and variant in results:
            ours, other = results["ours"], results[variant]
            summary[key] = round(other["median_overhead_s"] / ours["median_overhead_s"], 2)
            print(
                f"{what}: overhead {ours['median_overhead_s']:.2f} s against "
                f"{other['median_overhead_s']:.2f} s ({variant}), {summary[key]}x"
            )
    if "ours" in results and results["ours"]["idle_core_share_per_node"] is not None:
        share = results["ours"]["idle_core_share_per_node"]
        print(
            f"idle node (trainer, executor, SuperNode), {QUIET_AFTER_S:.0f} s after the run: "
            f"{100 * share:.2f}% of a core (goal < {100 * IDLE_GOAL:.0f}%)"
        )
    for path in args.curve_path if args.curve else []:
        curve = {
            n: run_path(path, args.rounds, plans=site_plans(n), task="breast_cancer")
            for n in args.curve
        }
        print(f"{path}, breast-cancer sites: nodes, median round wall, median overhead")
        for n, result in curve.items():
            print(
                f"  {n:>3} {result['median_round_wall_s']:>8.2f} s "
                f"{result['median_overhead_s']:>8.2f} s"
            )
        print(f"  goal at 20 nodes: overhead <= {CURVE_GOAL_S} s")
        key = "curve" if path == "ours" else f"curve_{path}"
        summary[key] = {
            str(n): {k: r[k] for k in ("median_round_wall_s", "median_overhead_s", "stages_s")}
            for n, r in curve.items()
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
