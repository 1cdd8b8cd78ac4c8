"""Per-round orchestration overhead with 4 hospital nodes: our path beside Flower's default.

overhead = round wall time (ServerApp: push train messages -> all replies in, aggregated)
           - the slowest node's DP-SGD training time in that round,
median over rounds 2.. (round 1 carries first-use costs). Two clusters run one after the
other in the same invocation, on the same federation and data:

* ours: `lepton node start` (the trainer's executor claims the SuperNode's tasks, packed
  messages, adaptive waits);
* stock: Flower's default path (`bench/stock_flower.py`): `flower-supernode --isolation
  subprocess` with Flower's own waits, one spawned `flwr-clientapp` per message that installs
  the bundle and builds the node's trainer before answering.

For each it prints the rounds, the median overhead and the median stages of the last reply
of each round (both sides' clocks on this host), then the ratio stock / ours, and one JSON
object on the last line.
    .venv/bin/python bench/round_overhead.py [--rounds 6] [--only ours|stock]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from stock_flower import (
    OUR_STAGES,
    STOCK_STAGES,
    StockCluster,
    breakdown,
    our_stage_rows,
    stock_stage_rows,
)

from coordinator.fl.journal import RoundRecord
from lepton.cluster import LocalCluster, NodePlan
from lepton_fl.config import (
    FederationSpec,
    PrivacySpec,
    RunSpec,
    SecureAggregationSpec,
    TrainingSpec,
)
from lepton_fl.datasets import HEART_DISEASE_SITES

GOAL_S = 1.0
PATHS = ("ours", "stock")


def federation(rounds: int) -> FederationSpec:
    """4 hospitals, plain FedAvg: one train wave per round (bench/secagg.py compares the
    secure round, two waves plus a setup, with this one)."""
    return FederationSpec(
        name="bench",
        task="heart_disease",
        rounds=rounds,
        min_participants=4,
        privacy=PrivacySpec(target_epsilon=3.0),
        training=TrainingSpec(local_epochs=2, batch_size=16, learning_rate=0.1),
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )


def run_path(path: str, rounds: int) -> dict[str, Any]:
    """One cluster on ``path`` ("ours" or "stock"), one run; its rounds and stages."""
    plans = [
        NodePlan(site, "heart_disease", site, 50.0, ("bench",), require_secure_aggregation=False)
        for site in HEART_DISEASE_SITES
    ]
    kind = StockCluster if path == "stock" else LocalCluster
    with (
        tempfile.TemporaryDirectory(prefix=f"lepton-bench-{path}-") as tmp,
        kind(Path(tmp), plans) as cluster,
    ):
        cluster.start()
        journal = cluster.journal_path("bench")
        run = RunSpec(
            federation=federation(rounds), members=cluster.members(), journal_path=str(journal)
        )
        cluster.submit(run)
        view = cluster.wait_for_run(journal, timeout=300 + 60 * rounds)
        if view.failure:
            raise SystemExit(f"bench run ({path}) failed: {view.failure}")
        if path == "stock":
            stages = breakdown(view.rounds, stock_stage_rows(cluster), STOCK_STAGES)
        else:
            stages = breakdown(view.rounds, our_stage_rows(cluster), OUR_STAGES)
    rows = [round_row(r) for r in view.rounds]
    steady = rows[1:] if len(rows) > 1 else rows
    return {
        "rounds": rows,
        "median_round_wall_s": round(statistics.median(r["wall_s"] for r in steady), 3),
        "median_overhead_s": round(statistics.median(r["overhead_s"] for r in steady), 3),
        "stages_s": stages,
    }


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
    parser.add_argument("--only", choices=PATHS, help="run one path only (no ratio)")
    args = parser.parse_args()
    results = {path: run_path(path, args.rounds) for path in PATHS if args.only in (None, path)}
    for path, result in results.items():
        print_path(path, result)
    summary: dict[str, Any] = {"bench": "round_overhead", "nodes": 4, "goal_overhead_s": GOAL_S}
    summary.update(results)
    if len(results) == len(PATHS):
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
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
