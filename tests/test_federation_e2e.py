"""End to end: a real TLS SuperLink with node auth, real SuperNodes and trainers on 127.0.0.1.

One cluster per module (starting it costs ~20 s on 2 cores): three honest nodes, one node
whose site budget is too small for any round, and one node whose key was never registered.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_node.ledger import Ledger
from coordinator.fl.journal import JournalView, read_journal
from lepton.cluster import LocalCluster, NodePlan, lepton_command
from lepton_fl.config import FederationSpec, PrivacySpec, RunSpec, TrainingSpec
from lepton_fl.privacy import epsilon_spent
from lepton_fl.processes import wait_until

pytestmark = pytest.mark.slow

FED = "e2e"
TARGET_EPSILON = 2.0
BUDGET = 10.0
ROUNDS = 3


def _spec(rounds: int = ROUNDS) -> FederationSpec:
    return FederationSpec(
        name=FED,
        task="breast_cancer",
        rounds=rounds,
        min_participants=3,
        privacy=PrivacySpec(target_epsilon=TARGET_EPSILON, delta=1e-5, max_grad_norm=1.0),
        training=TrainingSpec(local_epochs=5, batch_size=32, learning_rate=0.3),
        seed=3,  # an initial model that starts far from good, so learning shows
    )


PLANS = [
    NodePlan("site-a", "breast_cancer", "site-0-of-3", BUDGET, (FED,)),
    NodePlan("site-b", "breast_cancer", "site-1-of-3", BUDGET, (FED,)),
    NodePlan("site-c", "breast_cancer", "site-2-of-3", BUDGET, (FED,)),
    NodePlan("stingy", "breast_cancer", "site-0-of-3", 0.2, (FED,)),
    NodePlan("doomed", "breast_cancer", "site-2-of-3", BUDGET, (FED,)),
    NodePlan("intruder", "breast_cancer", "site-1-of-3", BUDGET, (FED,), register=False),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), PLANS) as running:
        running.start()
        yield running


@pytest.fixture(scope="module")
def first_run(cluster: LocalCluster) -> JournalView:
    journal = cluster.journal_path("first")
    members = cluster.members(["site-a", "site-b", "site-c", "stingy"])
    cluster.submit(RunSpec(federation=_spec(), members=members, journal_path=str(journal)))
    return cluster.wait_for_run(journal, timeout=300)


def _ledger_entries(path: Path) -> list:  # type: ignore[type-arg]
    with Ledger(path, read_only=True) as ledger:
        return ledger.entries()


def test_run_completes_every_round_with_the_honest_nodes(first_run: JournalView) -> None:
    assert first_run.failure is None
    rounds = first_run.of("round")
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for record in rounds:
        assert sorted(record["participants"]) == ["site-a", "site-b", "site-c"]


def test_model_improves_over_the_rounds(first_run: JournalView) -> None:
    first = first_run.of("round")[0]["nodes"]
    final = first_run.of("evaluation")[-1]["nodes"]
    honest = ["site-a", "site-b", "site-c"]
    before = sum(first[n]["pre_round_eval"]["accuracy"] for n in honest) / 3
    after = sum(final[n]["accuracy"] for n in honest) / 3
    assert after > before + 0.1, (before, after)
    assert after > 0.8


def test_ledger_holds_one_entry_per_node_per_round(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    run_id = str(first_run.of("run_started")[0]["flower_run_id"])
    for name in ("site-a", "site-b", "site-c"):
        entries = [
            e for e in _ledger_entries(cluster.nodes[name].ledger_path) if e.run_id == run_id
        ]
        assert [e.round for e in entries] == [1, 2, 3]
        assert all(e.noise_multiplier > 0 and e.steps > 0 for e in entries)


def test_epsilon_is_what_the_history_gives_and_within_budget(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    last = first_run.of("round")[-1]["nodes"]
    for name in ("site-a", "site-b", "site-c"):
        entries = _ledger_entries(cluster.nodes[name].ledger_path)
        recomputed = epsilon_spent([e.step for e in entries], delta=1e-5, accountant="rdp")
        assert last[name]["charge"]["epsilon"] == pytest.approx(recomputed, rel=1e-9)
        assert recomputed <= TARGET_EPSILON <= BUDGET


def test_node_over_budget_refuses_before_training(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    for record in first_run.of("round"):
        stingy = record["nodes"]["stingy"]
        assert stingy["status"] == "refused"
        assert stingy["code"] == "budget_exhausted"
        assert "budget of 0.20" in stingy["reason"] or "0.2" in stingy["reason"]
    assert _ledger_entries(cluster.nodes["stingy"].ledger_path) == []


def test_unregistered_node_is_refused(cluster: LocalCluster) -> None:
    intruder = cluster.nodes["intruder"].process
    deadline = time.monotonic() + 90
    while intruder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert intruder.poll() == 2
    assert "not registered" in intruder.log_tail(30)


def test_second_run_composes_with_the_first(cluster: LocalCluster, first_run: JournalView) -> None:
    ledger_path = cluster.nodes["site-a"].ledger_path
    recorded = _ledger_entries(ledger_path)
    before = epsilon_spent([e.step for e in recorded], delta=1e-5, accountant="rdp")
    journal = cluster.journal_path("second")
    cluster.submit(
        RunSpec(
            federation=_spec(rounds=1),
            members=cluster.members(["site-a", "site-b", "site-c"]),
            journal_path=str(journal),
        )
    )
    view = cluster.wait_for_run(journal, timeout=300)
    assert view.failure is None
    entries = _ledger_entries(ledger_path)
    assert len(entries) == len(recorded) + 1
    after = epsilon_spent([e.step for e in entries], delta=1e-5, accountant="rdp")
    assert after > before
    assert view.of("round")[0]["nodes"]["site-a"]["charge"]["epsilon"] == pytest.approx(after)


def test_operator_submits_a_run_from_the_command_line(
    cluster: LocalCluster, first_run: JournalView, tmp_path: Path
) -> None:
    assert cluster.superlink is not None
    assert cluster.pki is not None
    spec = tmp_path / "federation.toml"
    spec.write_text(
        f'name = "{FED}"\ntask = "breast_cancer"\nrounds = 1\nmin_participants = 3\n'
        f"[privacy]\ntarget_epsilon = {TARGET_EPSILON}\n"
        "[training]\nlocal_epochs = 2\nbatch_size = 32\nlearning_rate = 0.3\n"
    )
    members = [
        f"--member={m.name}={m.node_id}" for m in cluster.members(["site-a", "site-b", "site-c"])
    ]
    settings = cluster.superlink.settings

    done = subprocess.run(
        lepton_command(
            "coordinator",
            "run",
            "--federation",
            str(spec),
            *members,
            "--data-dir",
            str(settings.data_dir),
            "--pki-dir",
            str(cluster.pki.directory),
            "--port",
            str(settings.port),
            "--wait",
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "round 1: participants" in done.stdout
    assert done.stdout.rstrip().endswith("finished")


def test_node_ledger_command_reports_what_the_history_gives(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    node = cluster.nodes["site-b"]
    done = subprocess.run(
        lepton_command("node", "ledger", "--config", str(node.config_path), "--json"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    entries = _ledger_entries(node.ledger_path)
    assert len(report["history"]) == len(entries) >= ROUNDS
    recomputed = epsilon_spent([e.step for e in entries], delta=1e-5, accountant="rdp")
    assert report["epsilon"] == pytest.approx(recomputed)
    assert report["epsilon_budget"] == BUDGET


def test_a_node_killed_mid_round_leaves_the_sum_of_the_others(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    journal = cluster.journal_path("killed")
    members = cluster.members(["site-a", "site-b", "site-c", "doomed"])
    cluster.submit(
        RunSpec(
            federation=_spec(rounds=2),
            members=members,
            journal_path=str(journal),
            round_timeout_s=150,
        )
    )

    def round_two_started() -> bool:
        cluster.check_alive()
        return any(e.get("round") == 2 for e in read_journal(journal).of("round_started"))

    wait_until(round_two_started, timeout=300, what="round 2 to start")
    cluster.kill_node("doomed")  # SIGKILL, trainer and SuperNode, in the middle of round 2
    view = cluster.wait_for_run(journal, timeout=400)

    assert view.failure is None
    first, second = view.of("round")
    assert sorted(first["participants"]) == ["doomed", "site-a", "site-b", "site-c"]
    assert sorted(second["participants"]) == ["site-a", "site-b", "site-c"]
    assert second["secagg"]["dropouts"] == ["doomed"]
    assert second["secagg"]["session"] == first["secagg"]["session"]
    doomed = second["nodes"]["doomed"]
    assert doomed["status"] == "dropped", doomed
    assert "charge" not in doomed  # the coordinator charges only updates in the sum
    assert not _supernodes_of(cluster.root / "pki" / "nodes" / "doomed")  # died with its trainer
    # The sum holds exactly the survivors' FedAvg weights (sent masked, in the same vector).
    examples = {name: node["num_examples"] for name, node in first["nodes"].items()}
    expected = sum(examples[n] for n in ("site-a", "site-b", "site-c")) / sum(examples.values())
    assert second["secagg"]["weight_sum"] == pytest.approx(expected, abs=1e-6)
    assert second["secagg"]["clipped_values"] == 0
    # A wrong unmasking would leave weights of the order of the ring (about 2^31 levels):
    # the loss would explode. Two DP rounds need not reach the full run's accuracy, so the
    # check is that the survivors' model is finite and better than where it started.
    survivors = ("site-a", "site-b", "site-c")
    final = view.of("evaluation")[-1]["nodes"]
    before = [first["nodes"][n]["pre_round_eval"] for n in survivors]
    assert all(math.isfinite(final[n]["loss"]) for n in survivors), final
    loss_before = sum(b["loss"] for b in before)
    assert sum(final[n]["loss"] for n in survivors) < loss_before, (final, before)
    assert sum(final[n]["accuracy"] for n in survivors) > sum(b["accuracy"] for b in before)


def _supernodes_of(key: Path) -> list[int]:
    """PIDs of flower-supernode processes authenticating with ``key``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"flower-supernode" in a for a in argv) and str(key).encode() in argv:
            found.append(int(entry.name))
    return found
