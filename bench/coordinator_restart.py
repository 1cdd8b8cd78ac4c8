"""What the SuperLink's state file buys: running nodes across a coordinator restart.

Starts 3 breast-cancer nodes, runs a 2-round plain federation, restarts the coordinator on
the same ports and data directory (`LocalCluster.restart_coordinator`), then watches for
``--watch-s`` seconds whether the nodes are still running and what the SuperLink says of
them, and submits a second run. ``--state memory`` starts the SuperLink with Flower's
in-memory state (`bench/hooks/sitecustomize.py`) and registers every node's key again right
after the restart, as a coordinator rebuilding its registrations would.

Measured on 2026-12-04: with the file, every node was back online and took the second run;
with the in-memory state every SuperNode gave up ("terminated gracefully", exit 0) and its
`lepton node start` stopped. Prints one JSON object on the last line.
    .venv/bin/python bench/coordinator_restart.py [--state file|memory] [--watch-s 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from stock_flower import HOOKS

from coordinator.superlink import CONNECTION
from lepton.cluster import LocalCluster, NodePlan
from lepton_fl.config import (
    FederationSpec,
    PrivacySpec,
    RunSpec,
    SecureAggregationSpec,
    TrainingSpec,
)


def federation() -> FederationSpec:
    """A short plain federation over the 3 sites."""
    return FederationSpec(
        name="bench",
        task="breast_cancer",
        rounds=2,
        min_participants=3,
        privacy=PrivacySpec(target_epsilon=3.0),
        training=TrainingSpec(local_epochs=1, batch_size=16, learning_rate=0.1),
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )


def superlink_nodes(cluster: LocalCluster) -> dict[str, str]:
    """Node id -> status, as `flwr supernode list` reports them."""
    assert cluster.superlink is not None
    listed = cluster.superlink.flwr("supernode", "list", CONNECTION)
    return {str(n.get("node-id")): str(n.get("status")) for n in listed.get("nodes", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", choices=("file", "memory"), default="file")
    parser.add_argument("--watch-s", type=float, default=60.0)
    args = parser.parse_args()
    env = {"PYTHONPATH": str(HOOKS), "LEPTON_BENCH_HOOK": "memory_state"}
    plans = [
        NodePlan(
            f"site-{i}",
            "breast_cancer",
            f"site-{i}-of-3",
            50.0,
            ("bench",),
            require_secure_aggregation=False,
        )
        for i in range(3)
    ]
    result: dict[str, Any] = {"bench": "coordinator_restart", "state": args.state}
    with (
        tempfile.TemporaryDirectory(prefix="lepton-bench-restart-") as tmp,
        LocalCluster(
            Path(tmp), plans, coordinator_env=env if args.state == "memory" else None
        ) as cluster,
    ):
        cluster.start()
        first = cluster.journal_path("before")
        cluster.submit(
            RunSpec(federation=federation(), members=cluster.members(), journal_path=str(first))
        )
        result["before_failure"] = cluster.wait_for_run(first, timeout=300).failure
        cluster.restart_coordinator()
        members = cluster.members()
        if args.state == "memory":  # the SuperLink forgot every key: register them again
            assert cluster.superlink is not None
            assert cluster.pki is not None
            members = tuple(
                m.model_copy(
                    update={
                        "node_id": cluster.superlink.register_node(
                            cluster.pki.nodes[m.name].public_key, name=m.name
                        )
                    }
                )
                for m in members
            )
        deadline = time.monotonic() + args.watch_s
        while time.monotonic() < deadline:
            time.sleep(5)
        result["nodes_running"] = {n: node.process.running() for n, node in cluster.nodes.items()}
        result["superlink_nodes"] = superlink_nodes(cluster)
        print(f"after {args.watch_s:.0f} s: nodes running {result['nodes_running']}")
        print(f"the SuperLink lists {result['superlink_nodes']}")
        if all(result["nodes_running"].values()):
            second = cluster.journal_path("after")
            cluster.submit(
                RunSpec(federation=federation(), members=members, journal_path=str(second))
            )
            result["after_failure"] = cluster.wait_for_run(second, timeout=300).failure
            print(f"the run after the restart: {result['after_failure'] or 'finished'}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
