"""End to end: a node killed with SIGKILL and restarted at once rejoins by itself, fast.

A real TLS SuperLink with node auth and three real nodes. One node's `lepton node start` is
SIGKILLed (its SuperNode dies with it, by the parent-death signal, without saying goodbye to
the SuperLink) and started again with the same command line right away. The SuperLink still
counts the killed session as online for up to two heartbeat intervals (20 s with the interval
our SuperNode asks for, `client_node.supernode_launcher`) and refuses the new one meanwhile
(flower-supernode exit 305); the node retries by itself, and the next run trains with all
three nodes. Plain rounds (no secure aggregation): the point is the node's session, not the
masking.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from client_node.settings import load_node_settings
from client_node.stale_session import end_previous_session, previous_node_id
from client_node.supernode_launcher import HEARTBEAT_INTERVAL_S, STALE_SESSION_S
from coordinator.superlink import SuperLink
from lepton.cluster import LocalCluster, NodePlan
from lepton_fl.config import (
    FederationSpec,
    PrivacySpec,
    RunSpec,
    SecureAggregationSpec,
    TrainingSpec,
)
from lepton_fl.processes import wait_until

pytestmark = pytest.mark.slow

FED = "restart"
NAMES = ["hospital-a", "hospital-b", "hospital-c"]
VICTIM = "hospital-c"
PLANS = [
    NodePlan(n, "breast_cancer", f"site-{i}-of-3", 10.0, (FED,), require_secure_aggregation=False)
    for i, n in enumerate(NAMES)
]


def _spec() -> FederationSpec:
    return FederationSpec(
        name=FED,
        task="breast_cancer",
        rounds=1,
        min_participants=3,
        privacy=PrivacySpec(target_epsilon=2.0, delta=1e-5, max_grad_norm=1.0),
        training=TrainingSpec(local_epochs=1, batch_size=32, learning_rate=0.3),
        secure_aggregation=SecureAggregationSpec(enabled=False),
        seed=3,
    )


def _activations(cluster: LocalCluster, name: str) -> int:
    """How many times the node's SuperNode was activated (Flower logs its node id then)."""
    log = cluster.nodes[name].state_dir / "logs" / "supernode.log"
    return log.read_text(errors="replace").count("SuperNode ID:") if log.exists() else 0


def _heartbeat_intervals(superlink: SuperLink) -> set[float]:
    """The heartbeat interval the SuperLink keeps for each online node (its own state)."""
    sessions = superlink.node_sessions().values()
    return {s.heartbeat_interval for s in sessions if s.status == "online"}


def _online_nodes(superlink: SuperLink) -> set[int]:
    return {s.node_id for s in superlink.node_sessions().values() if s.status == "online"}


def test_a_node_killed_and_restarted_at_once_takes_part_in_the_next_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalCluster(tmp_path, PLANS) as cluster:
        cluster.start()
        superlink = cluster.superlink
        assert superlink is not None
        wait_until(
            lambda: all(_activations(cluster, n) >= 1 for n in NAMES),
            timeout=120,
            what="every node's SuperNode to be activated",
        )
        assert _heartbeat_intervals(superlink) == {float(HEARTBEAT_INTERVAL_S)}
        # The attack on the goodbye a restarted node sends for its crashed predecessor: a
        # node (or anyone holding a node key) ends another node's live session. The
        # SuperLink's node authentication refuses it (the node id is not the key's).
        attacker = load_node_settings(cluster.nodes[NAMES[0]].config_path)
        victim_id = previous_node_id(cluster.nodes[VICTIM].state_dir / "logs" / "supernode.log")
        assert victim_id is not None
        online = _online_nodes(superlink)
        with caplog.at_level(logging.INFO, logger="lepton.node"):
            assert end_previous_session(attacker, victim_id) is False
        assert "401 Unauthorized" in caplog.text  # refused by the SuperLink, not unreachable
        assert _online_nodes(superlink) == online

        before = _activations(cluster, VICTIM)

        killed = time.monotonic()
        cluster.restart_node(VICTIM)  # SIGKILL, then the same command line at once
        assert time.monotonic() - killed < 5.0
        wait_until(
            lambda: _activations(cluster, VICTIM) > before,
            timeout=120,
            what=f"the restarted {VICTIM} to be activated again",
        )
        back_s = time.monotonic() - killed
        # The next run, once the node is back: one submitted while the SuperLink still counts
        # the killed session online would address it, and the SuperLink answers that message
        # "Node Unavailable" when the session expires, before the new one pulls it.
        journal = cluster.journal_path("next")
        cluster.submit(
            RunSpec(federation=_spec(), members=cluster.members(), journal_path=str(journal))
        )
        view = cluster.wait_for_run(journal, timeout=300)

        node_log = (tmp_path / "logs" / f"node-{VICTIM}.log").read_text(errors="replace")
        print(f"{VICTIM} back online {back_s:.1f} s after it was killed")  # noqa: T201
        assert view.failure is None
        assert [sorted(r.participants) for r in view.rounds] == [NAMES]
        # The SuperLink may refuse the new session while the killed one still counts as
        # online: the node then says so once, and never that its key is not registered.
        if "refused to activate" in node_log:
            assert node_log.count("refused to activate") == 1
            assert "still holds this node's previous session" in node_log
            assert "activated it after" in node_log
            # ... and it ends that session itself, signed with its own key, rather than
            # waiting up to STALE_SESSION_S for it to lapse
            assert "ended its previous session" in node_log
        assert "is not registered" not in node_log
        # Node start-up (imports, data) plus at most the stale session and one retry wait
        # (Flower's own interval would keep it out for up to a minute).
        assert back_s < STALE_SESSION_S + 25.0
