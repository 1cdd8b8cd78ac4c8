"""A site-policy refusal reaches the run's status at the coordinator.

The run is really created through the admin API and submitted to a real SuperLink (nodes
enrolled with keys registered there), as in tests/test_api_runs.py. No SuperNode processes
run here: the ServerApp's rounds (`serve_run`, its real journal/ledger sink and SecAgg+
protocol) run in this process and talk to real `NodeTrainer`s through the trainer's own
request handler. Two of the four sites refuse by their node.toml policy, so the round
cannot reach the federation's minimum of three, and `GET /runs/{id}` must say which nodes
refused and which node.toml field decided it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from admin_support import AdminApi, run_row
from flwr.app import RecordDict
from signing_support import pin_key

from client_node.ledger import Ledger
from client_node.settings import NodeSettings
from client_node.trainer.core import NodeTrainer
from client_node.trainer.secure import SecureAggregation
from client_node.trainer.service import handle_request
from coordinator.fl.journal import read_journal
from coordinator.fl.secure_rounds import Answer, SecAggFedAvg
from coordinator.fl.server_app import RunAbortedError, serve_run
from coordinator.services.round_sink import LedgerJournal
from coordinator.superlink import SuperLink
from lepton_fl.config import RunSpec
from lepton_fl.datasets import load_partition
from lepton_fl.wire import Envelope, envelope_request, records_from_bytes

POLICIES: dict[str, dict[str, Any]] = {
    "site-0": {},
    "site-1": {},
    "site-2": {"max_grad_norm": 0.5},  # the federation clips at 1.0
    "site-3": {"min_noise_multiplier": 50.0},
}


@dataclass(frozen=True)
class _RunInfo:
    run_id: int


class _SuperLinkView:
    """What `serve_run` reads from Flower's Grid besides the transport: the run id and the
    node ids online (every site here is)."""

    def __init__(self, run_id: int, node_ids: set[int]) -> None:
        self.run = _RunInfo(run_id)
        self._node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return sorted(self._node_ids)


@pytest.fixture
def ledgers() -> Iterator[list[Ledger]]:
    opened: list[Ledger] = []
    yield opened
    for ledger in opened:
        ledger.close()


def _trainer(
    home: Path, name: str, index: int, ledgers: list[Ledger], pinned_pem: str, key: Path
) -> NodeTrainer:
    home.mkdir(parents=True)
    (home / "ca.pem").write_text("unused here")
    settings = NodeSettings.model_validate(
        {
            "node": {"name": name, "state_dir": str(home)},
            "data": {"task": "breast_cancer", "partition": f"site-{index}-of-4"},
            "privacy": {"epsilon_budget": 10.0, "federations": ["clinic-fed"]} | POLICIES[name],
            "superlink": {"address": "127.0.0.1:1", "root_certificates": str(home / "ca.pem")},
            "auth": {"private_key": str(key)},  # the key enrolled through the API
            "coordinator": pin_key(home, pem=pinned_pem),
        }
    )
    ledger = Ledger(settings.ledger_path)
    ledgers.append(ledger)
    split = load_partition("breast_cancer", f"site-{index}-of-4")
    return NodeTrainer(settings=settings, split=split, ledger=ledger, device=torch.device("cpu"))


def test_refusing_nodes_reasons_reach_the_admin_run_status(
    tmp_path: Path, superlink: SuperLink, ledgers: list[Ledger]
) -> None:
    torch.set_num_threads(1)
    with AdminApi.start(tmp_path / "coordinator", superlink) as api:
        tenant = api.tenant("clinics")
        nodes = [api.enrolled_node(tenant, name) for name in POLICIES]
        federation = api.federation("clinic-fed", [n["id"] for n in nodes])
        run = api.ok("POST", f"/federations/{federation['id']}/runs", api.admin)
        row = run_row(api, run["id"])
        spec = RunSpec.model_validate_json(row.spec)
        assert spec.federation.secure_aggregation.enabled

        assert spec.authorization is not None  # the admin service signed the run
        pinned = api.ok("GET", "/signing-key", api.admin)["public_key_pem"]
        sites: dict[int, tuple[NodeTrainer, SecureAggregation]] = {}
        for index, member in enumerate(sorted(spec.members, key=lambda m: m.name)):
            key = api.keys_dir / "nodes" / member.name
            trainer = _trainer(tmp_path / member.name, member.name, index, ledgers, pinned, key)
            sites[member.node_id] = (trainer, SecureAggregation(trainer))
        flower_run = int(str(row.flower_run_id))

        def transport(
            contents: Mapping[int, RecordDict], message_type: str, group: str, timeout: float
        ) -> dict[int, Answer]:
            answers: dict[int, Answer] = {}
            for node_id, content in contents.items():
                kind = "train" if message_type == "train" else "secagg"
                envelope = Envelope(kind=kind, run_id=flower_run, message_id=group, node_id=node_id)
                data = envelope_request(envelope, RecordDict(dict(content.items())))
                trainer, secure = sites[node_id]
                answers[node_id] = records_from_bytes(handle_request(trainer, secure, data))
            return answers

        grid = _SuperLinkView(flower_run, set(sites))
        protocol = SecAggFedAvg(spec.federation, run_id=str(flower_run), transport=transport)
        # the ServerApp's journal, recorded in the admin DB as the journal follower does
        journal = LedgerJournal(Path(spec.journal_path), db=api.db, run_id=run["id"])
        with pytest.raises(RunAbortedError) as caught:
            serve_run(grid, spec, journal, protocol=protocol)  # type: ignore[arg-type]

        status = api.ok("GET", f"/runs/{run['id']}", tenant.headers)
        rounds = api.ok("GET", f"/runs/{run['id']}/rounds", api.admin)

    assert status["state"] == "failed"
    failure = status["failure"]
    assert failure == str(caught.value)
    assert "fewer than the federation's minimum of 3" in failure
    assert "site-2: [privacy].max_grad_norm = 0.5 but federation 'clinic-fed'" in failure
    assert "site-3: [privacy].min_noise_multiplier = 50 but federation 'clinic-fed'" in failure
    refusals = rounds[0]["refusals"]
    by_name = {n["name"]: n["id"] for n in nodes}
    assert "[privacy].max_grad_norm" in refusals[by_name["site-2"]]
    assert "[privacy].min_noise_multiplier" in refusals[by_name["site-3"]]
    assert all(not ledger.entries() for ledger in ledgers)  # nobody trained
    ended = read_journal(Path(spec.journal_path)).ended
    assert ended is not None
    assert (ended.state, ended.reason, ended.kind) == ("failed", failure, "RunAbortedError")
