"""End to end: a node never runs code from a Flower App Bundle, and keeps serving after one.

A real TLS SuperLink with node auth and three real nodes (SuperNode in ``--isolation process``,
the trainer's executor claiming tasks). An attacker with access to the SuperLink's Control
API submits, with the ordinary ``flwr run`` CLI, a FAB that names the legitimate ServerApp
(so messages do reach the nodes) but its own ClientApp, ``evil_client:app``, shipped as
``evil_client.py`` that writes a marker file when imported. The marker must never appear,
every node a message of that run reaches must log why it refused the bundle (the coordinator
now refuses such a bundle itself, so usually none does: the node-side wall alone is tested on
crafted bundles in `test_node_executor.py`), every node must stay up, must refuse to hand
its tasks to an unauthenticated local claimant, and must then train in a normal run,
including a node that was killed and restarted in between.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient

from client_node.settings import load_node_settings
from coordinator.superlink import CONNECTION
from lepton.cluster import LocalCluster, NodePlan
from lepton_fl.config import FederationSpec, PrivacySpec, RunSpec, TrainingSpec
from lepton_fl.processes import wait_until

pytestmark = pytest.mark.slow

FED = "walls"
NAMES = ["site-a", "site-b", "site-c"]
PLANS = [NodePlan(n, "breast_cancer", f"site-{i}-of-3", 10.0, (FED,)) for i, n in enumerate(NAMES)]


def _spec() -> FederationSpec:
    return FederationSpec(
        name=FED,
        task="breast_cancer",
        rounds=1,
        min_participants=3,
        privacy=PrivacySpec(target_epsilon=2.0, delta=1e-5, max_grad_norm=1.0),
        training=TrainingSpec(local_epochs=1, batch_size=32, learning_rate=0.3),
        seed=3,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("walls"), PLANS) as running:
        running.start()
        yield running


def _evil_fab(directory: Path, marker: Path) -> Path:
    """A FAB directory: the real ServerApp's name, a foreign ClientApp and its code."""
    directory.mkdir(parents=True)
    (directory / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "lepton-federation"
            version = "0.1.0"
            license = "Apache-2.0"
            dependencies = []

            [tool.flwr.app]
            publisher = "lepton"

            [tool.flwr.app.components]
            serverapp = "coordinator.fl.server_app:app"
            clientapp = "evil_client:app"

            [tool.flwr.app.config]
            lepton-run = ""
            """
        )
    )
    (directory / "evil_client.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('the node ran code from a FAB')\n"
        "from flwr.clientapp import ClientApp\n"
        "app = ClientApp()\n"
    )
    return directory


def _log(cluster: LocalCluster, name: str) -> str:
    return (cluster.root / "logs" / f"node-{name}.log").read_text(errors="replace")


def _supernode_log(cluster: LocalCluster, name: str) -> str:
    return (cluster.nodes[name].state_dir / "logs" / "supernode.log").read_text(errors="replace")


def _run_status(cluster: LocalCluster, run_id: int) -> str:
    assert cluster.superlink is not None
    runs = cluster.superlink.flwr("ls", CONNECTION, "--run-id", str(run_id))["runs"]
    return str(runs[0]["status"])


def test_a_fab_with_its_own_clientapp_never_runs_on_a_node(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Whichever wall stops it first (the coordinator refuses such a bundle too, before any
    message is sent), no FAB code runs; every node a message of the run reached refused it."""
    assert cluster.superlink is not None
    marker = tmp_path / "pwned"
    fab = _evil_fab(tmp_path / "evil-app", marker)
    journal = cluster.journal_path("evil")
    run = RunSpec(federation=_spec(), members=cluster.members(), journal_path=str(journal))
    config = tmp_path / "run.toml"
    config.write_text(f"lepton-run = {json.dumps(run.model_dump_json())}\n")

    payload = cluster.superlink.flwr("run", str(fab), CONNECTION, "--run-config", str(config))
    run_id = int(payload["run-id"])
    wait_until(
        lambda: _run_status(cluster, run_id).startswith("finished"),
        timeout=180,
        what=f"the foreign run {run_id} to end",
    )

    assert not marker.exists()
    cluster.check_alive()
    for name in NAMES:
        if f"RUN {run_id}" in _supernode_log(cluster, name):  # a message of it got here
            log = _log(cluster, name)
            assert f"run {run_id}: The node refused the run's Flower app" in log
            assert "'evil_client:app'" in log
            assert "evil_client.py" in log


def test_another_local_process_cannot_claim_a_nodes_tasks(cluster: LocalCluster) -> None:
    """AcquireTask is HMAC-signed with the node's secret: without it the SuperNode says no."""
    settings = load_node_settings(cluster.nodes["site-b"].config_path)
    client = RuntimeHttpClient.from_server_address(
        f"127.0.0.1:{settings.flower.clientappio_port}",
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")],
    )
    with client, pytest.raises(httpx.HTTPStatusError) as refused:
        client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))

    assert refused.value.response.status_code in (401, 403)


def test_nodes_train_after_the_attack_and_a_restarted_node_reattaches(
    cluster: LocalCluster,
) -> None:
    supernode_log = cluster.nodes["site-c"].state_dir / "logs" / "supernode.log"
    sessions = supernode_log.read_text().count("SuperNode ID:")
    cluster.kill_node("site-c")
    cluster.start_node("site-c", cluster.nodes["site-c"].member)
    cluster.wait_for_nodes(timeout=120)
    # the SuperLink counts the killed session online for two heartbeat periods (20 s with our
    # SuperNode's 10 s heartbeats) and refuses the new one until then; the node retries, and a
    # run waits for it to be back
    wait_until(
        lambda: supernode_log.read_text().count("SuperNode ID:") > sessions,
        timeout=150,
        what="the restarted node to be activated again",
    )
    journal = cluster.journal_path("after")

    cluster.submit(
        RunSpec(federation=_spec(), members=cluster.members(), journal_path=str(journal))
    )
    view = cluster.wait_for_run(journal, timeout=300)

    assert view.failure is None
    assert sorted(view.rounds[0].participants) == NAMES
