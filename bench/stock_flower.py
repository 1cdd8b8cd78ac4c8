"""Flower's default ClientApp path beside ours, for the benches: the same cluster, but each
node is a stock `flower-supernode` (``--isolation subprocess``, Flower's own waits) whose
`flower-superexec` spawns one `flwr-clientapp` process per message, which installs the run's
bundle and runs its ClientApp: the node's trainer, built anew each time
(`bench/hooks/stock_clientapp.py`; the coordinator and our nodes accept no bundle with
code, so the stock nodes find that module under the name our bundle gives, through
`bench/hooks/sitecustomize.py` on their PYTHONPATH).

Per-stage times come from both sides' own clocks on this one host: `stock-stages.jsonl`
(written by `bench/hooks/stock_clientapp.py`) for the stock path, the executor's
``task stages`` log lines (`client_node.executor.STAGES_PREFIX`) for ours.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from client_node.executor import STAGES_PREFIX
from client_node.settings import load_node_settings
from coordinator.fl.journal import RoundRecord
from lepton.cluster import LocalCluster, NodePlan, RunningNode
from lepton_fl.config import Member
from lepton_fl.processes import ManagedProcess, executable, flower_env

HOOKS = Path(__file__).resolve().parent / "hooks"
STAGES_FILE = "stock-stages.jsonl"

OUR_STAGES = (
    ("to the node's executor", "created", "claimed"),
    ("task input from the SuperNode", "claimed", "input"),
    ("trainer (checks, DP-SGD, ledger)", "input", "handled"),
    ("reply to the SuperNode", "handled", "pushed"),
)
STOCK_STAGES = (
    ("to the node, until flwr-clientapp starts", "created", "process_started"),
    ("flwr-clientapp start, task input, bundle install", "process_started", "imports_started"),
    ("ClientApp imports (torch, Opacus, trainer)", "imports_started", "imported"),
    ("node setup (node.toml, data, ledger)", "imported", "trainer_built"),
    ("trainer (checks, DP-SGD, ledger)", "trainer_built", "handled"),
)
BACK_STAGE = "back to the ServerApp, aggregation"
WAVE_SPREAD_S = 0.05
"""The longest gap between the creation of two messages of one wave."""


class StockCluster(LocalCluster):
    """A `LocalCluster` whose nodes run Flower's default path instead of `lepton node start`."""

    def _start_node(self, plan: NodePlan, member: Member | None) -> RunningNode:
        state_dir, config = self._write_node_config(plan)
        settings = load_node_settings(config)
        argv = [
            executable("flower-supernode"),
            "--root-certificates",
            str(settings.superlink.root_certificates),
            "--superlink",
            settings.superlink.address,
            "--auth-supernode-private-key",
            str(settings.auth.private_key),
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.flower.clientappio_port),
            "--node-config",
            f'node-name="{plan.name}" lepton-config="{config}"',
        ]
        process = self._track(
            ManagedProcess(
                name=f"stock flower-supernode ({plan.name})",
                argv=argv,
                log_path=self.root / "logs" / f"node-{plan.name}.log",
                env=flower_env(
                    state_dir / "flwr",
                    {"PYTHONPATH": str(HOOKS), "LEPTON_BENCH_HOOK": "stock_clientapp"},
                ),
                cwd=state_dir,
            )
        )
        return RunningNode(plan, state_dir, config, process, member)

    def wait_for_nodes(self, *, timeout: float = 120.0) -> None:
        """Nothing to ping: the ServerApp waits for its members to come online."""
        self.check_alive()


def our_stage_rows(
    cluster: LocalCluster, types: Sequence[str] = ("train",)
) -> list[dict[str, Any]]:
    """Every completed task's stage times, from the executors' log lines, for the message
    `types` ("train"; a SecAgg+ setup or unmask wave is a "query")."""
    rows = []
    for name in cluster.nodes:
        log = cluster.root / "logs" / f"node-{name}.log"
        for line in log.read_text(encoding="utf-8").splitlines():
            _, found, payload = line.partition(STAGES_PREFIX)
            if found:
                row = json.loads(payload)
                if row.get("type") in types and "pushed" in row:
                    rows.append(row)
    return rows


def stock_stage_rows(cluster: LocalCluster) -> list[dict[str, float]]:
    """Every train message's stage times, from the stock ClientApps' files."""
    rows = []
    for node in cluster.nodes.values():
        path = node.state_dir / STAGES_FILE
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                if row.get("message_type") == "train":
                    rows.append(row)
    return rows


def creation_groups(rows: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Task rows grouped by the wave that sent them, in order: the ServerApp creates a wave's
    messages together (within `WAVE_SPREAD_S`), and waves apart."""
    groups: list[list[dict[str, Any]]] = []
    for row in sorted(rows, key=lambda r: r["created"]):
        if groups and row["created"] - groups[-1][0]["created"] < WAVE_SPREAD_S:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def breakdown(
    rounds: Sequence[RoundRecord],
    rows: Iterable[dict[str, float]],
    stages: Sequence[tuple[str, str, str]],
    *,
    skip: int = 1,
) -> dict[str, float]:
    """Median seconds per stage over ``rounds`` after the first ``skip`` (warm-up), for the
    node whose reply came last in each.

    A round's train messages are created together, when the ServerApp pushes them (its
    ``seconds`` run from there to the aggregate), so the rows group by creation time, one
    group per round in order. What follows that last reply until the round's end is
    `BACK_STAGE`."""
    groups = creation_groups(rows)
    if len(groups) != len(rounds):
        raise SystemExit(f"{len(groups)} groups of train messages for {len(rounds)} rounds")
    per_stage: dict[str, list[float]] = {label: [] for label, _, _ in stages}
    per_stage[BACK_STAGE] = []
    last_key = stages[-1][2]
    for record, group in list(zip(rounds, groups, strict=True))[skip:]:
        end = min(r["created"] for r in group) + record.seconds
        last = max(group, key=lambda r: r[last_key])
        for label, begin, finish in stages:
            per_stage[label].append(last[finish] - last[begin])
        per_stage[BACK_STAGE].append(end - last[last_key])
    return {k: round(statistics.median(v), 3) for k, v in per_stage.items() if v}
