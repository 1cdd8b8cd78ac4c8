"""End to end: a real TLS SuperLink with node auth, real SuperNodes and trainers on 127.0.0.1.

One cluster per module (starting it costs ~20 s on 2 cores): three honest nodes, one node
whose site budget is too small for any round, and one node whose key was never registered.
"""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse
from flwr.proto.node_pb2 import Node

from client_node.ledger import Ledger
from client_node.trainer.evaluation import evaluate
from coordinator.fl.journal import JournalView, read_journal
from coordinator.fl.launcher import CA_ENV, PASSED_THROUGH, RUNTIME_ENV, TOKEN_ENV
from coordinator.superlink import CONNECTION, fab_directory
from lepton.cluster import LocalCluster, NodePlan, lepton_command
from lepton_fl.config import (
    FederationSpec,
    PrivacySpec,
    RunSpec,
    SecureAggregationSpec,
    TrainingSpec,
)
from lepton_fl.crypto import create_node_key
from lepton_fl.datasets import load_partition
from lepton_fl.models import build_model, model_spec, set_weights
from lepton_fl.privacy import epsilon_spent
from lepton_fl.privacy.membership import JOINT_SENSITIVITY
from lepton_fl.processes import QUIET_FLOWER_ENV, executable, flower_env, wait_until

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
        privacy=PrivacySpec(
            target_epsilon=TARGET_EPSILON, delta=1e-5, max_grad_norm=1.0, membership_audit=True
        ),
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
    rounds = first_run.rounds
    assert [r.round for r in rounds] == [1, 2, 3]
    for record in rounds:
        assert sorted(record.participants) == ["site-a", "site-b", "site-c"]


def test_model_learns_and_evaluation_is_a_dp_release(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    final = first_run.evaluation
    assert final is not None
    honest = ["site-a", "site-b", "site-c"]
    released = [final.nodes[n] for n in honest]
    # noised counts (no pre-round evaluation, no loss, no AUC leave a node since issue 10)
    assert all(n.evaluation is not None and n.evaluation.loss is None for n in released)
    assert all(n.charge is not None and n.charge.sample_rate == 1.0 for n in released)
    # the membership audit's histograms came with each release, noised for the joint release
    for node in released:
        assert node.membership is not None
        assert node.charge is not None
        assert node.membership.noise_std == pytest.approx(
            JOINT_SENSITIVITY * node.charge.noise_multiplier
        )
    assert final.aggregate is not None
    assert final.aggregate.metrics is not None
    # The released accuracy carries the release's noise (about 5 counts per cell here: 0.75
    # to 0.97 over 100 simulated runs); the model itself is checked on the sites' test rows.
    assert (
        _global_accuracy(
            cluster.journal_path("first"), ["site-0-of-3", "site-1-of-3", "site-2-of-3"]
        )
        > 0.8
    )


def test_ledger_holds_one_entry_per_node_per_round(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    assert first_run.started is not None
    run_id = str(first_run.started.flower_run_id)
    for name in ("site-a", "site-b", "site-c"):
        entries = [
            e for e in _ledger_entries(cluster.nodes[name].ledger_path) if e.run_id == run_id
        ]
        assert [(e.round, e.kind) for e in entries] == [
            (1, "train"),
            (2, "train"),
            (3, "train"),
            (3, "evaluate"),  # the scheduled evaluation's DP release, charged too
        ]
        assert all(e.noise_multiplier > 0 and e.steps > 0 for e in entries)


def test_epsilon_is_what_the_history_gives_and_within_budget(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    last = first_run.rounds[-1].nodes
    assert first_run.evaluation is not None
    final = first_run.evaluation.nodes
    for name in ("site-a", "site-b", "site-c"):
        entries = _ledger_entries(cluster.nodes[name].ledger_path)
        assert [e.kind for e in entries] == ["train"] * ROUNDS + ["evaluate"]
        trained = epsilon_spent([e.step for e in entries[:-1]], delta=1e-5, accountant="rdp")
        total = epsilon_spent([e.step for e in entries], delta=1e-5, accountant="rdp")
        trained_charge, final_charge = last[name].charge, final[name].charge
        assert trained_charge is not None
        assert final_charge is not None
        assert trained_charge.epsilon == pytest.approx(trained, rel=1e-9)
        assert final_charge.epsilon == pytest.approx(total, rel=1e-9)
        assert trained < total <= TARGET_EPSILON <= BUDGET


def test_node_over_budget_refuses_before_training(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    for record in first_run.rounds:
        stingy = record.nodes["stingy"]
        assert stingy.status == "refused"
        assert stingy.code == "budget_exhausted"
        assert "budget of 0.20" in stingy.reason or "0.2" in stingy.reason
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
    assert [e.kind for e in entries[len(recorded) :]] == ["train", "evaluate"]
    trained = epsilon_spent([e.step for e in entries[:-1]], delta=1e-5, accountant="rdp")
    after = epsilon_spent([e.step for e in entries], delta=1e-5, accountant="rdp")
    assert after > trained > before
    charge = view.rounds[0].nodes["site-a"].charge
    assert charge is not None
    assert charge.epsilon == pytest.approx(trained)


def test_coordinator_run_is_retired_for_the_admin_api(tmp_path: Path) -> None:
    done = subprocess.run(
        lepton_command("coordinator", "run"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 2
    assert "use_admin_api" in done.stderr
    assert "POST /api/v1/federations/{id}/runs" in done.stderr


def test_outsiders_and_nodes_cannot_reach_the_control_or_runtime_api(
    cluster: LocalCluster, first_run: JournalView, tmp_path: Path
) -> None:
    """An outsider with the CA certificate (the flwr CLI at the public port) and an enrolled
    node (its signed Fleet headers, straight at the routes): every Control and Runtime call
    is refused by the front; the enrolled nodes still train afterwards."""
    assert cluster.superlink is not None
    assert cluster.pki is not None
    settings = cluster.superlink.settings
    before = _registered_ids(cluster)
    outsider = tmp_path / "flwr"
    outsider.mkdir()
    (outsider / "config.toml").write_text(
        '[superlink]\ndefault = "victim"\n\n[superlink.victim]\n'
        f'address = "{settings.address}"\n'
        f'root-certificates = "{settings.ca_certificate.resolve()}"\n'
    )
    key = create_node_key(tmp_path / "keys", "mallory").public_key
    registered = cluster.members(["site-a"])[0].node_id
    attacks = [
        ("supernode", "register", str(key), "victim"),
        ("supernode", "unregister", str(registered), "victim"),
        ("supernode", "list", "victim"),
        ("run", str(fab_directory()), "victim"),
        ("ls", "victim"),
        ("stop", "1", "victim"),
    ]
    for attack in attacks:
        done = subprocess.run(
            [executable("flwr"), *attack, "--format", "json"],
            env=flower_env(outsider),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        refused = done.returncode != 0 or '"success": false' in done.stdout
        assert refused, (attack, done.stdout, done.stderr)

    for path in ("/v1/control/list-runs", "/v1/control/register-node", "/v1/runtime/get-nodes"):
        response = _as_enrolled_node(cluster, "site-a", path)
        assert response.status_code == 404, (path, response.status_code, response.text)
    assert _as_enrolled_node(cluster, "site-a", "/v1/fleet/get-run").status_code != 404

    assert _registered_ids(cluster) == before  # no key was added or removed
    journal = cluster.journal_path("after-attacks")
    cluster.submit(
        RunSpec(
            federation=_spec(rounds=1),
            members=cluster.members(["site-a", "site-b", "site-c"]),
            journal_path=str(journal),
        )
    )
    environ, cwd = _serverapp_environment(cluster)
    view = cluster.wait_for_run(journal, timeout=300)
    assert view.failure is None
    # The ServerApp inherits nothing of the coordinator's environment and works elsewhere.
    assert set(environ) <= {*PASSED_THROUGH, *QUIET_FLOWER_ENV, TOKEN_ENV, RUNTIME_ENV, CA_ENV}
    assert "PGPASSWORD" not in environ
    assert cwd.parent == settings.data_dir / "serverapp"
    assert list(cwd.iterdir()) == []


def test_a_node_can_neither_pull_nor_wait_for_another_nodes_messages(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    """The SuperLink holds a node's empty pull open until a message for it comes
    (coordinator.superlink_launcher), one waiting pull per node. An enrolled node that asks
    for another node's messages, to take them or to take its waiting slot, is refused by
    Flower's node authentication before any handler runs; its own pull is answered."""
    victim = cluster.members(["site-b"])[0].node_id
    own = cluster.members(["site-a"])[0].node_id
    path = "/v1/fleet/pull-messages"

    def pull(node_id: int) -> httpx.Response:
        request = PullMessagesRequest(node=Node(node_id=node_id))
        return _as_enrolled_node(cluster, "site-a", path, request.SerializeToString())

    stolen = pull(victim)
    assert stolen.status_code == 401, (stolen.status_code, stolen.text)
    answered = pull(own)  # no run is active: an empty answer after the wait
    assert answered.status_code == 200, (answered.status_code, answered.text)
    assert list(PullMessagesResponse.FromString(answered.content).messages_list) == []


def test_a_hand_made_app_bundle_never_runs_on_the_coordinator(
    cluster: LocalCluster, first_run: JournalView, tmp_path: Path
) -> None:
    """An operator on the coordinator host submits a bundle with its own ServerApp and
    ClientApp modules over loopback: the launcher refuses it and none of its code runs."""
    assert cluster.superlink is not None
    marker = tmp_path / "pwned"
    app = tmp_path / "evil-app"
    app.mkdir()
    payload = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    (app / "evil_server.py").write_text(
        payload + "from flwr.serverapp import ServerApp\napp = ServerApp()\n"
    )
    (app / "evil_client.py").write_text(
        payload + "from flwr.clientapp import ClientApp\napp = ClientApp()\n"
    )
    (app / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "evil"\nversion = "1.0.0"\ndependencies = []\n'
        '[tool.flwr.app]\npublisher = "mallory"\n'
        '[tool.flwr.app.components]\nserverapp = "evil_server:app"\n'
        'clientapp = "evil_client:app"\n'
    )

    run_id = int(cluster.superlink.flwr("run", str(app), CONNECTION)["run-id"])

    def ended() -> bool:
        runs = cluster.superlink.flwr("ls", "--run-id", str(run_id), CONNECTION)  # type: ignore[union-attr]
        return "finished" in json.dumps(runs)

    wait_until(ended, timeout=120, what=f"the hand-made run {run_id} to end")
    status = json.dumps(cluster.superlink.flwr("ls", "--run-id", str(run_id), CONNECTION))
    assert "failed" in status, status
    assert not marker.exists()
    log = (cluster.root / "coordinator" / "logs" / f"serverapp-{run_id}.log").read_text()
    assert "evil_server:app" in log
    assert "refused" in log


def _registered_ids(cluster: LocalCluster) -> set[str]:
    assert cluster.superlink is not None
    listing = cluster.superlink.flwr("supernode", "list", CONNECTION)
    return {
        str(n["node-id"])
        for n in listing.get("nodes", [])
        if "unregistered" not in str(n.get("status", "")).lower()
    }


def _as_enrolled_node(
    cluster: LocalCluster, name: str, path: str, content: bytes = b""
) -> httpx.Response:
    """POST `content` to the public port with `name`'s valid SuperNode authentication
    headers."""
    assert cluster.superlink is not None
    assert cluster.pki is not None
    key = serialization.load_ssh_private_key(
        cluster.pki.nodes[name].private_key.read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    timestamp = datetime.datetime.now(datetime.UTC).isoformat()
    signature = key.sign(timestamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    headers = {
        "flwr-public-key": base64.b64encode(public).decode(),
        "flwr-timestamp": timestamp,
        "flwr-signature": base64.b64encode(signature).decode(),
        "content-type": "application/protobuf",
    }
    settings = cluster.superlink.settings
    with httpx.Client(verify=str(settings.ca_certificate)) as client:
        return client.post(f"https://{settings.address}{path}", headers=headers, content=content)


def _serverapp_environment(cluster: LocalCluster) -> tuple[dict[str, str], Path]:
    """The environment and working directory of the coordinator's running ServerApp."""
    coordinator = next(p for p in cluster._processes if p.name == "lepton coordinator")
    found: dict[str, str] = {}
    cwd = Path()

    def running() -> bool:
        nonlocal found, cwd
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == coordinator.pid and b"coordinator.fl.serverapp_process" in argv:
                raw = (entry / "environ").read_bytes().split(b"\0")
                found = dict(v.decode().split("=", 1) for v in raw if b"=" in v)
                cwd = (entry / "cwd").resolve()
                return True
        return False

    wait_until(running, timeout=60, what="the run's ServerApp process")
    return found, cwd


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


def _kill_when_round_two_starts(cluster: LocalCluster, journal: Path, name: str) -> None:
    """SIGKILL the node's trainer and SuperNode as soon as the run's round 2 has started.

    Polled tightly: with fast rounds, the node can train and send its round-2 input within
    the half second that `wait_until`'s growing backoff may sleep, and then it is no dropout."""

    def round_two_started() -> bool:
        cluster.check_alive()
        return any(e.round == 2 for e in read_journal(journal).round_starts)

    deadline = time.monotonic() + 300
    while not round_two_started():
        assert time.monotonic() < deadline, "round 2 did not start within 300 s"
        time.sleep(0.02)
    cluster.kill_node(name)


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

    _kill_when_round_two_starts(cluster, journal, "doomed")
    view = cluster.wait_for_run(journal, timeout=400)

    assert view.failure is None
    first, second = view.rounds
    assert first.secagg is not None
    assert second.secagg is not None
    assert sorted(first.participants) == ["doomed", "site-a", "site-b", "site-c"]
    assert sorted(second.participants) == ["site-a", "site-b", "site-c"]
    assert second.secagg.dropouts == ("doomed",)
    assert second.secagg.session == first.secagg.session
    doomed = second.nodes["doomed"]
    assert doomed.status == "dropped", doomed
    assert doomed.charge is None  # the coordinator charges only updates in the sum
    assert not _supernodes_of(cluster.root / "pki" / "nodes" / "doomed")  # died with its trainer
    # The sum holds exactly the survivors' FedAvg weights (sent masked, in the same vector):
    # the coordinator learns their example total, never one node's size (or its timings).
    for node in first.nodes.values():
        assert (node.num_examples, node.train_seconds, node.node_seconds) == (None, None, None)
    totals = [r.secagg.examples for r in (first, second) if r.secagg is not None]
    assert totals[0] is not None
    assert totals[1] is not None
    assert second.secagg.size_bound is not None
    assert second.secagg.weight_sum == pytest.approx(totals[1] / second.secagg.size_bound, abs=1e-6)
    assert second.secagg.clipped_values == 0
    # The weight channel travels in the same masked vector as the model: a wrong unmasking
    # would leave it uniform over the ring, not the survivors' exact training-set total.
    assert totals == [_train_size(PARTS + ("site-2-of-3",)), _train_size(PARTS)]
    survivors = ("site-a", "site-b", "site-c")
    final = view.evaluation
    assert final is not None
    assert all(final.nodes[n].status == "ok" for n in survivors), final
    assert final.aggregate is not None
    assert final.aggregate.metrics is not None, final
    assert final.aggregate.metrics.nodes == survivors
    # Two DP rounds: 0.79 to 0.93 over 100 simulated runs, chance about 0.63.
    assert _global_accuracy(journal, PARTS) > 0.7


def test_a_node_killed_in_a_one_wave_round_voids_it_and_the_run_goes_on(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    """One-wave secure rounds (``dropout_recovery`` off): no unmask wave, so a node that dies
    after round 2 started leaves masks nobody can remove. Round 2 aggregates nothing (the
    nodes whose masked input came are still charged); round 3 goes on without the node, in
    the same session, and the run completes."""
    cluster.restart_node("doomed")  # killed by the test above, or still running
    journal = cluster.journal_path("one-wave-killed")
    spec = _spec(rounds=3)
    spec = spec.model_copy(
        update={"secure_aggregation": SecureAggregationSpec(dropout_recovery=False)}
    )
    members = cluster.members(["site-a", "site-b", "site-c", "doomed"])
    cluster.submit(
        RunSpec(federation=spec, members=members, journal_path=str(journal), round_timeout_s=150)
    )

    _kill_when_round_two_starts(cluster, journal, "doomed")
    view = cluster.wait_for_run(journal, timeout=400)

    assert view.failure is None
    first, second, third = view.rounds
    assert sorted(first.participants) == ["doomed", "site-a", "site-b", "site-c"]
    assert first.secagg is not None
    assert first.secagg.setup is not None
    assert first.secagg.setup.dropout_recovery is False
    assert second.participants == ()
    assert second.secagg is not None
    assert second.secagg.failure is not None
    assert second.secagg.failure.code == "round_void"
    assert second.secagg.dropouts == ("doomed",)
    assert second.nodes["doomed"].status == "dropped"
    assert second.nodes["doomed"].charge is None
    for name in ("site-a", "site-b", "site-c"):
        node = second.nodes[name]
        assert (node.status, node.code) == ("error", "secagg_round_void"), node
        assert node.charge is not None  # its masked input left it: charged, not aggregated
        own = [e for e in _ledger_entries(cluster.nodes[name].ledger_path) if e.round == 2]
        assert own
        assert own[-1].epsilon_after == pytest.approx(node.charge.epsilon)
    assert sorted(third.participants) == ["site-a", "site-b", "site-c"]
    assert third.secagg is not None
    assert third.secagg.session == first.secagg.session
    assert third.secagg.examples == _train_size(PARTS)
    assert view.ended is not None
    assert view.ended.rounds_completed == 3


def test_running_nodes_survive_a_coordinator_restart(
    cluster: LocalCluster, first_run: JournalView
) -> None:
    # The SuperLink keeps its state in memory: the restarted coordinator registers every
    # key again (new node ids, which the cluster follows), each SuperNode finds its session
    # gone, and its node starts it again by itself (docs/architecture.md).
    before = {m.name: m.node_id for m in cluster.members()}
    cluster.restart_coordinator()
    after = {m.name: m.node_id for m in cluster.members()}
    assert after.keys() == before.keys()
    assert not set(after.values()) & set(before.values())  # registered anew, under new ids
    journal = cluster.journal_path("after-restart")
    small = PrivacySpec(target_epsilon=0.5, delta=1e-5, max_grad_norm=1.0)
    cluster.submit(
        RunSpec(
            federation=_spec(rounds=1).model_copy(update={"privacy": small}),
            members=cluster.members(["site-a", "site-b", "site-c"]),
            journal_path=str(journal),
        )
    )
    view = cluster.wait_for_run(journal, timeout=300)

    assert view.failure is None
    assert sorted(view.rounds[0].participants) == ["site-a", "site-b", "site-c"]


PARTS = ("site-0-of-3", "site-1-of-3", "site-2-of-3")


def _train_size(partitions: tuple[str, ...]) -> int:
    return sum(len(load_partition("breast_cancer", p).y_train) for p in partitions)


def _global_accuracy(journal: Path, partitions: Sequence[str]) -> float:
    """The accuracy of the run's saved global model on the pooled test rows of
    ``partitions`` (what the test knows; the coordinator never sees these rows)."""
    saved = np.load(journal.with_name("checkpoint.npz"))
    splits = [load_partition("breast_cancer", p) for p in partitions]
    model = build_model(
        model_spec(_spec().model), num_features=splits[0].x_test.shape[1], num_classes=2, seed=0
    )
    set_weights(model, [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)])
    result = evaluate(
        model,
        np.concatenate([s.x_test for s in splits]),
        np.concatenate([s.y_test for s in splits]),
        device=torch.device("cpu"),
    )
    return result.accuracy


def _supernodes_of(key: Path) -> list[int]:
    """PIDs of SuperNode processes (our launcher of flower-supernode) using ``key``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"client_node.supernode_launcher" in a for a in argv) and str(key).encode() in argv:
            found.append(int(entry.name))
    return found
