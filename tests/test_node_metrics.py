"""The node's own /metrics (`client_node.metrics`): served on loopback unless the site says
otherwise, read from the node's real ledger at each scrape (epsilon as `lepton node ledger`
reports it), refusals counted from the trainer's replies, and a port in use stops the node
with what to fix."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flwr.app import RecordDict
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from typer.testing import CliRunner

from client_node.ledger import Ledger
from client_node.metrics import MetricsServer, ReplyCounter
from client_node.settings import NodeConfigError, NodeSettings, load_node_settings
from lepton.cli import app
from lepton.cluster import lepton_command
from lepton_fl.privacy import AccountantStep, epsilon_spent
from lepton_fl.processes import free_port
from lepton_fl.wire import Envelope, TrainReply, train_reply_to_records

DATASET = "breast_cancer:site-0-of-3"
STEP = AccountantStep(noise_multiplier=1.0, sample_rate=0.05, steps=30)


def _node_toml(tmp_path: Path, metrics: str = "") -> Path:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nname = "clinic"\nstate_dir = "{tmp_path / "state"}"\n\n'
        '[data]\ntask = "breast_cancer"\npartition = "site-0-of-3"\n\n'
        '[privacy]\nepsilon_budget = 10.0\nfederations = ["fed-one", "fed-two"]\n'
        "max_epsilon_per_federation = 6.0\n\n"
        f'[superlink]\naddress = "127.0.0.1:1"\nroot_certificates = "{tmp_path / "ca.pem"}"\n\n'
        f'[auth]\nprivate_key = "{tmp_path / "key"}"\n\n'
        f"[metrics]\n{metrics}"
    )
    (tmp_path / "ca.pem").write_text("unused here")
    (tmp_path / "key").write_text("unused here")
    return config


def _record(ledger: Ledger, run: str, rnd: int, federation: str, kind: str = "train") -> None:
    ledger.record(
        dataset_id=DATASET,
        run_id=run,
        round=rnd,
        step=STEP,
        accountant="rdp",
        delta=1e-5,
        epsilon_after=1.0,
        num_examples=140,
        federation=federation,
        kind=kind,
    )


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return load_node_settings(_node_toml(tmp_path, f"port = {free_port()}\n"))


@pytest.fixture
def served(settings: NodeSettings) -> Iterator[tuple[MetricsServer, Ledger, ReplyCounter]]:
    ledger = Ledger(settings.ledger_path)
    replies = ReplyCounter()
    server = MetricsServer(settings, ledger, replies)
    server.start()
    try:
        yield server, ledger, replies
    finally:
        server.stop()
        ledger.close()


def _scrape(settings: NodeSettings) -> list[Sample]:
    response = httpx.get(f"http://127.0.0.1:{settings.metrics.port}/metrics", timeout=10)
    assert response.status_code == 200
    return [s for f in text_string_to_metric_families(response.text) for s in f.samples]


def _one(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, [s for s in samples if s.name == name])
    return found[0]


# -- settings ----------------------------------------------------------------------------


def test_metrics_listen_on_loopback_by_default(tmp_path: Path) -> None:
    metrics = load_node_settings(_node_toml(tmp_path)).metrics

    assert (metrics.enabled, metrics.host, metrics.port) == (True, "127.0.0.1", 9095)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "metrics.example"])  # noqa: S104
def test_any_other_address_must_be_chosen_explicitly(tmp_path: Path, host: str) -> None:
    with pytest.raises(NodeConfigError, match="allow_remote = true") as caught:
        load_node_settings(_node_toml(tmp_path, f'host = "{host}"\n'))
    assert "metrics" in str(caught.value)

    chosen = load_node_settings(_node_toml(tmp_path, f'host = "{host}"\nallow_remote = true\n'))
    assert chosen.metrics.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_addresses_need_no_choice(tmp_path: Path, host: str) -> None:
    assert load_node_settings(_node_toml(tmp_path, f'host = "{host}"\n')).metrics.host == host


# -- the ledger's series -------------------------------------------------------------------


def test_epsilon_is_the_ledgers_at_each_scrape(
    settings: NodeSettings, served: tuple[MetricsServer, Ledger, ReplyCounter]
) -> None:
    _, ledger, _ = served
    node = {"node": "clinic", "dataset": DATASET}
    empty = _scrape(settings)
    assert _one(empty, "lepton_node_epsilon_spent", **node) == 0.0
    assert _one(empty, "lepton_node_epsilon_remaining", **node) == 10.0
    assert not [s for s in empty if s.name == "lepton_node_last_round_timestamp_seconds"]

    _record(ledger, "7", 1, "fed-one")
    _record(ledger, "7", 2, "fed-one")
    _record(ledger, "7", 2, "fed-one", kind="evaluate")
    before = time.time()
    _record(ledger, "9", 1, "fed-two")
    samples = _scrape(settings)

    spent = _one(samples, "lepton_node_epsilon_spent", **node)
    assert spent == epsilon_spent([STEP] * 4, delta=1e-5, accountant="rdp")
    assert spent == _cli_report(settings)["epsilon"]  # what `lepton node ledger` says
    assert _one(samples, "lepton_node_epsilon_budget", **node) == 10.0
    assert _one(samples, "lepton_node_epsilon_remaining", **node) == pytest.approx(10.0 - spent)
    one = _one(samples, "lepton_node_federation_epsilon_spent", federation="fed-one", **node)
    assert one == epsilon_spent([STEP] * 3, delta=1e-5, accountant="rdp")
    assert _one(samples, "lepton_node_federation_epsilon_cap", federation="fed-two", **node) == 6
    assert _one(samples, "lepton_node_rounds_trained_total", **node) == 3
    assert _one(samples, "lepton_node_evaluations_total", **node) == 1
    last = _one(samples, "lepton_node_last_round_timestamp_seconds", **node)
    assert before - 1 <= last <= time.time() + 1


def _cli_report(settings: NodeSettings) -> dict[str, float]:
    config = settings.node.state_dir.parent / "node.toml"
    done = CliRunner().invoke(app, ["node", "ledger", "--config", str(config), "--json"])
    assert done.exit_code == 0, done.output
    report: dict[str, float] = json.loads(done.stdout)
    return report


# -- refusals ------------------------------------------------------------------------------


def _reply(status: str, code: str) -> RecordDict:
    if status == "ok":
        return train_reply_to_records(TrainReply(status="ok"))
    return train_reply_to_records(TrainReply(status=status, code=code, reason="why"))  # type: ignore[arg-type]


def test_refusals_are_counted_by_kind_status_and_code(
    settings: NodeSettings, served: tuple[MetricsServer, Ledger, ReplyCounter]
) -> None:
    _, _, replies = served
    answers = iter(
        [
            _reply("refused", "budget_exhausted"),
            _reply("refused", "budget_exhausted"),
            _reply("refused", "run_unsigned"),
            _reply("error", "data_invalid"),
            _reply("ok", ""),
            _reply("refused", "Not A Code; rm -rf"),
        ]
    )
    handler = replies.wrap(lambda envelope, content: next(answers))

    for _ in range(6):
        handler(Envelope(kind="train", run_id=1, message_id="m", node_id=2), RecordDict())
    samples = _scrape(settings)

    counts = {
        (s.labels["kind"], s.labels["status"], s.labels["code"]): s.value
        for s in samples
        if s.name == "lepton_node_refusals_total"
    }
    assert counts == {
        ("train", "refused", "budget_exhausted"): 2,
        ("train", "refused", "run_unsigned"): 1,
        ("train", "error", "data_invalid"): 1,
        ("train", "refused", "other"): 1,
    }


# -- the port ------------------------------------------------------------------------------


def test_a_port_in_use_is_named(settings: NodeSettings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", settings.metrics.port))
        taken.listen()
        with Ledger(settings.ledger_path) as ledger:
            server = MetricsServer(settings, ledger, ReplyCounter())
            with pytest.raises(NodeConfigError) as caught:
                server.start()
    assert caught.value.code == "port_in_use"
    assert f"127.0.0.1:{settings.metrics.port}" in str(caught.value)
    assert "[metrics] port" in str(caught.value)


def test_node_start_stops_when_its_metrics_port_is_taken(tmp_path: Path) -> None:
    port = free_port()
    config = _node_toml(tmp_path, f"port = {port}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            lepton_command("node", "start", "--config", str(config)),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "state" / "logs" / "supernode.log").exists()  # never started it
