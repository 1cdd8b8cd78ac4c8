"""End to end: runs submitted around the admin service are refused by every node.

A real TLS SuperLink with node auth and three real nodes that pin the coordinator's key. A
run signed with that key (what the admin service does; `LocalCluster.submit` stands in for
it) trains; the same signed run submitted again under a new Flower run, and a run submitted
without a signature (`flwr run` by hand on the coordinator host), are refused by every node
before any key exchange or training.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client_node.ledger import Ledger
from coordinator.fl.journal import JournalView
from lepton.cluster import LocalCluster, NodePlan
from lepton_fl.config import FederationSpec, PrivacySpec, RunSpec, TrainingSpec
from lepton_fl.crypto.release import load_signing_key
from lepton_fl.crypto.run_authorization import authorize_run

pytestmark = pytest.mark.slow

FED = "signed-runs"
PLANS = [NodePlan(f"site-{i}", "breast_cancer", f"site-{i}-of-3", 10.0, (FED,)) for i in range(3)]
SPEC = FederationSpec(
    name=FED,
    task="breast_cancer",
    rounds=1,
    min_participants=3,
    privacy=PrivacySpec(target_epsilon=2.0, delta=1e-5),
    training=TrainingSpec(local_epochs=1, batch_size=32, learning_rate=0.3),
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("signed"), PLANS) as running:
        running.start()
        yield running


def _run(
    cluster: LocalCluster, name: str, run: RunSpec | None = None, **submit: bool
) -> JournalView:
    journal = cluster.journal_path(name)
    run = run or RunSpec(federation=SPEC, members=cluster.members(), journal_path="x")
    run = run.model_copy(update={"journal_path": str(journal)})
    cluster.submit(run, **submit)
    return cluster.wait_for_run(journal, timeout=240)


def _charges(cluster: LocalCluster) -> int:
    """Training charges over every node's ledger (a scheduled evaluation adds its own)."""
    total = 0
    for node in cluster.nodes.values():
        with Ledger(node.ledger_path, read_only=True) as ledger:
            total += sum(1 for e in ledger.entries() if e.kind == "train")
    return total


def _refusals(view: JournalView) -> dict[str, str]:
    (record,) = view.rounds
    return {name: node.code for name, node in record.nodes.items()}


def test_unsigned_signed_and_replayed_runs(cluster: LocalCluster) -> None:
    unsigned = _run(cluster, "unsigned", sign=False)

    assert unsigned.failure is not None
    assert _refusals(unsigned) == {p.name: "run_unsigned" for p in PLANS}
    assert _charges(cluster) == 0

    signed = authorize_run(
        RunSpec(
            federation=SPEC,
            members=cluster.members(),
            journal_path="x",
            admin_run_id="admin-run-e2e",
        ),
        load_signing_key(cluster.signing_key_path),
    )
    first = _run(cluster, "signed", signed)
    assert first.failure is None, first.failure
    assert _charges(cluster) == 3

    replayed = _run(cluster, "replayed", signed)
    assert replayed.failure is not None
    assert _refusals(replayed) == {p.name: "run_replayed" for p in PLANS}
    assert _charges(cluster) == 3
