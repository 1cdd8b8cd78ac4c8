"""The coordinator-kill drill: SIGKILL `lepton coordinator start` mid-run, start it again at
once, N times in a row, and count how many times everything ended cleanly.

3 breast-cancer hospitals are enrolled through the admin API; a secure-aggregation
federation of 6 rounds. Each drill: start a run, wait until its first round is recorded,
SIGKILL the coordinator process alone (as the OOM killer would; its children must end by
themselves), start it again on the same data directory and ports
(`LocalCluster.restart_coordinator(crash=True)`). Clean means: the restart starts on the
first try, the interrupted run ends as *interrupted by a coordinator restart* within
``--end-timeout-s``, and the next run of the federation is accepted (the next drill's run;
after the last drill, a run that must finish). Finally every node's own ledger is
reconciled with the coordinator's (repair first: a round in flight at the kill may have
charged a node whose reply never came) and must then agree exactly.

Prints one line per drill and one JSON object on the last line.
    .venv/bin/python bench/coordinator_kill_drill.py [--drills 10] [--workdir DIR]

Each drill line also gives `next_round_1_s`: how long the run started right after the kill
took to complete its first round (a healthy secure round here takes about 2 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lepton.admin_client import AdminClient, RunStatus
from lepton.cluster import LocalCluster, NodePlan
from lepton.demo_admin import enroll_sites, federation_definition
from lepton.ledger_report import ledger_rows
from lepton_fl.config import FederationSpec, PrivacySpec, SecureAggregationSpec, TrainingSpec

FED = "drill"


def federation() -> FederationSpec:
    """Long enough to be killed mid-run, cheap in epsilon: drills run many runs per node."""
    return FederationSpec(
        name=FED,
        task="breast_cancer",
        rounds=6,
        min_participants=3,
        privacy=PrivacySpec(target_epsilon=1.0),
        training=TrainingSpec(local_epochs=1, batch_size=32, learning_rate=0.3),
        secure_aggregation=SecureAggregationSpec(enabled=True),
    )


def wait_run(admin: AdminClient, run_id: str, done: Any, timeout: float) -> RunStatus:
    """Poll a run until ``done(run)`` or the timeout; return its last state."""
    deadline = time.monotonic() + timeout
    run = admin.run(run_id)
    while not done(run) and time.monotonic() < deadline:
        time.sleep(0.25)
        run = admin.run(run_id)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drills", type=int, default=10)
    parser.add_argument("--end-timeout-s", type=float, default=60.0)
    parser.add_argument("--workdir", type=Path, help="keep the cluster's files (logs) here")
    args = parser.parse_args()
    plans = [
        NodePlan(f"site-{i}", "breast_cancer", f"site-{i}-of-3", 1000.0, (FED,)) for i in range(3)
    ]
    drills: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(args.workdir or Path(tmp), plans) as cluster,
    ):
        cluster.start_coordinator()
        cluster.wait_for_api()
        with AdminClient.connect(cluster.api_url) as anonymous:
            admin = anonymous.as_key(cluster.create_admin_key())
            sites = enroll_sites(
                admin,
                cluster,
                plans,
                on_enrolled=lambda site: cluster.start_node(site.name, site.member),
            )
            cluster.wait_for_nodes()
            fed = admin.create_federation(
                federation_definition(federation()), [s.node.id for s in sites.values()]
            )
            run = admin.start_run(fed.id)
            next_started: float | None = None
            for number in range(1, args.drills + 1):
                run = wait_run(admin, run.id, lambda r: r.rounds_completed >= 1 or r.ended, 180)
                if next_started is not None and drills:
                    # how long the run after a kill took to complete its first round
                    if not run.ended:
                        drills[-1]["next_round_1_s"] = round(time.monotonic() - next_started, 2)
                    print(json.dumps(drills[-1]), flush=True)
                if run.ended:
                    why = f"the run after the last kill {run.state}: {(run.failure or '')[:300]}"
                    drills.append({"drill": number, "clean": False, "why": why})
                    print(json.dumps(drills[-1]), flush=True)
                    run = admin.start_run(fed.id)
                    next_started = None
                    continue
                killed = time.monotonic()
                restart_ok = True
                try:
                    cluster.restart_coordinator(crash=True)
                    cluster.wait_for_api()
                except Exception as err:  # noqa: BLE001 - the drill reports it
                    restart_ok = False
                    drills.append({"drill": number, "clean": False, "why": str(err)[:300]})
                    break
                restarted = time.monotonic() - killed
                ended = wait_run(admin, run.id, lambda r: r.ended, args.end_timeout_s)
                settled = time.monotonic() - killed
                interrupted = ended.state == "failed" and "Interrupted by a coordinator" in (
                    ended.failure or ""
                )
                run = admin.start_run(fed.id)  # refused (409) if the federation stayed blocked
                next_started = time.monotonic()
                drills.append(
                    {
                        "drill": number,
                        "clean": restart_ok and interrupted,
                        "killed_after_round": ended.rounds_completed,
                        "restart_s": round(restarted, 2),
                        "run_ended_s": round(settled, 2),
                        "ended": ended.state,
                    }
                )
            if next_started is not None and drills:
                wait_run(admin, run.id, lambda r: r.rounds_completed >= 1 or r.ended, 180)
                drills[-1]["next_round_1_s"] = round(time.monotonic() - next_started, 2)
                print(json.dumps(drills[-1]), flush=True)
            last = wait_run(admin, run.id, lambda r: r.ended, 300)
            reconciled = {}
            for name, site in sites.items():
                rows = ledger_rows(cluster.nodes[name].ledger_path)
                repaired = admin.reconcile(site.node.id, rows, repair=True)
                verdict = admin.reconcile(site.node.id, rows)
                reconciled[name] = {"repaired": len(repaired.repaired), "ok_after": verdict.ok}
    restarts = [d["restart_s"] for d in drills if "restart_s" in d]
    nexts = [d["next_round_1_s"] for d in drills if "next_round_1_s" in d]
    print(
        json.dumps(
            {
                "drills": len(drills),
                "clean": sum(1 for d in drills if d["clean"]),
                "restart_s_median": statistics.median(restarts) if restarts else None,
                "run_ended_s_max": max((d.get("run_ended_s", 0) for d in drills), default=None),
                "next_round_1_s_median": statistics.median(nexts) if nexts else None,
                "last_run": last.state,
                "ledgers": reconciled,
            }
        )
    )


if __name__ == "__main__":
    main()
