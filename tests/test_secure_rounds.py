"""FedAvg through SecAgg+ with real trainers, in process: the coordinator's protocol talks to
real `NodeTrainer`s (real data, Opacus DP-SGD, ledgers) through the trainer's own request
handler, the same bytes the relay forwards. Flower's transport is exercised end to end in
tests/test_federation_e2e.py; here the waves are delivered directly, so that the aggregate
can be checked against the plaintext updates each trainer computed."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from signing_support import pin_key, signed, write_node_key

from client_node.ledger import Ledger
from client_node.settings import NodeSettings
from client_node.trainer.core import NodeTrainer
from client_node.trainer.secure import SecureAggregation
from client_node.trainer.service import handle_request
from coordinator.fl.rounds import RoundOutcome
from coordinator.fl.secure_rounds import Answer, SecAggFedAvg
from coordinator.fl.server_app import round_record
from lepton_fl.config import (
    FederationSpec,
    Member,
    PrivacySpec,
    SecureAggregationSpec,
    TrainingSpec,
)
from lepton_fl.datasets import load_partition
from lepton_fl.model_init import initial_weights
from lepton_fl.secagg import Binding, Stage, UnmaskRequest
from lepton_fl.secagg.fedavg import size_bucket
from lepton_fl.wire import (
    Envelope,
    envelope_request,
    records_from_bytes,
    records_to_bytes,
)
from lepton_fl.wire.secagg import (
    is_secagg,
    secagg_request_from_records,
    secagg_request_to_records,
)

FED = FederationSpec(
    name="clinic-fed",
    task="breast_cancer",
    rounds=3,
    privacy=PrivacySpec(target_epsilon=3.0, delta=1e-5),
    training=TrainingSpec(local_epochs=1, batch_size=32, learning_rate=0.3),
)
RUN = 41


@dataclass
class Site:
    member: Member
    trainer: NodeTrainer
    secure: SecureAggregation


@dataclass
class Federation:
    sites: dict[int, Site]
    silent_from: dict[int, str] = field(default_factory=dict)  # node id -> first unanswered group
    seen: list[str] = field(default_factory=list)

    def send(
        self, contents: Mapping[int, RecordDict], message_type: str, group_id: str, timeout: float
    ) -> dict[int, Answer]:
        if group_id not in self.seen:
            self.seen.append(group_id)
        answers: dict[int, Answer] = {}
        for node_id, content in contents.items():
            first_silent = self.silent_from.get(node_id)
            if first_silent is not None and first_silent in self.seen:
                continue
            site = self.sites[node_id]
            kind = "train" if message_type == "train" else "secagg"
            envelope = Envelope(kind=kind, run_id=RUN, message_id=group_id, node_id=node_id)
            data = envelope_request(envelope, RecordDict(dict(content.items())))
            answers[node_id] = records_from_bytes(handle_request(site.trainer, site.secure, data))
        return answers


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    ledgers: list[Ledger] = []
    sites: dict[int, Site] = {}
    for index in range(4):
        home = tmp_path / f"site{index}"
        home.mkdir()
        (home / "ca.pem").write_text("unused here")
        node_id = 1000 + 7 * index  # Flower ids are arbitrary 64-bit numbers
        federations = ["clinic-fed"] if index != 3 else ["clinic-fed", "other"]
        settings = NodeSettings.model_validate(
            {
                "node": {"name": f"site{index}", "state_dir": str(home)},
                "data": {"task": "breast_cancer", "partition": f"site-{index}-of-4"},
                "privacy": {"epsilon_budget": 10.0, "federations": federations},
                "superlink": {"address": "127.0.0.1:1", "root_certificates": str(home / "ca.pem")},
                "auth": {"private_key": write_node_key(home, node_id)},
                "coordinator": pin_key(home),
            }
        )
        ledger = Ledger(settings.ledger_path)
        ledgers.append(ledger)
        split = load_partition("breast_cancer", f"site-{index}-of-4")
        trainer = NodeTrainer(
            settings=settings, split=split, ledger=ledger, device=torch.device("cpu")
        )
        sites[node_id] = Site(
            Member(name=f"site{index}", node_id=node_id), trainer, SecureAggregation(trainer)
        )
    yield Federation(sites)
    for ledger in ledgers:
        ledger.close()


def _protocol(fed: Federation, spec: FederationSpec = FED) -> SecAggFedAvg:
    return SecAggFedAvg(spec, run_id=str(RUN), transport=fed.send)


def _expected(
    fed: Federation, outcome: RoundOutcome, received: list[np.ndarray]
) -> list[np.ndarray]:
    """Plain FedAvg of the survivors, from the updates their trainers computed."""
    survivors = [o.member.node_id for o in outcome.participants]
    replies = [fed.sites[n].trainer._replies[(RUN, outcome.round)] for n in survivors]
    total = sum(r.num_examples for r in replies)
    return [
        w.astype(np.float64)
        + sum((r.weights[i].astype(np.float64) - w) * (r.num_examples / total) for r in replies)
        for i, w in enumerate(received)
    ]


def _run_round(
    fed: Federation,
    protocol: SecAggFedAvg,
    rnd: int,
    weights: list[np.ndarray],
    spec: FederationSpec = FED,
) -> RoundOutcome:
    members = [s.member for s in fed.sites.values()]
    instruction = signed(spec, rnd, weights, node_ids=fed.sites)
    return protocol.run_round(None, members, instruction, timeout=60)


def test_secure_rounds_equal_plain_fedavg_of_the_same_updates(federation: Federation) -> None:
    protocol = _protocol(federation)
    weights = initial_weights(FED)
    for rnd in (1, 2):
        outcome = _run_round(federation, protocol, rnd, weights)
        assert outcome.weights is not None, outcome
        assert len(outcome.participants) == 4
        expected = _expected(federation, outcome, weights)
        bound = outcome.details["quantization_error_bound"]
        assert bound < 1e-6
        for got, want in zip(outcome.weights, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=50 * bound + 1e-7)
        assert outcome.details["session"] == 1
        assert outcome.details["dropouts"] == []
        assert outcome.details["clipped_values"] == 0
        assert ("setup" in outcome.details) == (rnd == 1)
        weights = outcome.weights
    for site in federation.sites.values():  # every node charged once per round
        assert [e.round for e in site.trainer.ledger.entries()] == [1, 2]


def test_a_node_that_drops_mid_round_is_left_out_and_the_sum_is_exact(
    federation: Federation,
) -> None:
    protocol = _protocol(federation)
    weights = initial_weights(FED)
    first = _run_round(federation, protocol, 1, weights)
    assert first.weights is not None
    gone = 1007
    federation.silent_from[gone] = "2"  # silent from round 2's wave A on
    second = _run_round(federation, protocol, 2, first.weights)
    assert second.weights is not None
    names = {o.member.name: o.status for o in second.outcomes}
    assert names == {"site0": "ok", "site1": "dropped", "site2": "ok", "site3": "ok"}
    assert second.details["dropouts"] == ["site1"]
    expected = _expected(federation, second, first.weights)
    for got, want in zip(second.weights, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the weights of exactly the survivors entered the sum
    examples = {n: s.trainer._replies[(RUN, 1)].num_examples for n, s in federation.sites.items()}
    survivors = sum(v for n, v in examples.items() if n != gone)
    bound = max(size_bucket(v) for v in examples.values())  # the coordinator knows no more
    assert second.details["size_bound"] == bound
    assert second.details["weight_sum"] == pytest.approx(survivors / bound, abs=1e-6)
    assert second.details["examples"] == survivors  # the survivors' total, from the sum
    # round 3 goes on in the same session without the dropped node
    third = _run_round(federation, protocol, 3, second.weights)
    assert third.weights is not None
    assert third.details["session"] == 1
    assert [o.member.name for o in third.participants] == ["site0", "site2", "site3"]


def test_too_few_nodes_left_fails_the_round_with_a_reason(federation: Federation) -> None:
    protocol = _protocol(federation)
    federation.silent_from[1007] = "1"
    federation.silent_from[1014] = "1"
    outcome = _run_round(federation, protocol, 1, initial_weights(FED))
    assert outcome.weights is None
    assert "failure" in outcome.details
    assert "3" in outcome.details["failure"]["reason"]


def test_a_node_refusing_by_site_policy_stays_out_before_any_key_or_training(
    federation: Federation,
) -> None:
    spec = FED.model_copy(update={"name": "other"})  # only site3 accepts "other"
    protocol = _protocol(federation, spec)
    members = [s.member for s in federation.sites.values()]
    outcome = protocol.run_round(
        None, members, signed(spec, 1, initial_weights(spec), node_ids=federation.sites), timeout=60
    )
    assert outcome.weights is None
    refused = [o for o in outcome.outcomes if o.status == "refused"]
    assert {o.code for o in refused} == {"federation_not_accepted"}
    assert len(refused) == 3
    assert all(not s.trainer.ledger.entries() for s in federation.sites.values())


def test_a_request_replayed_into_another_run_is_refused(federation: Federation) -> None:
    protocol = _protocol(federation)
    captured: list[tuple[int, RecordDict]] = []
    real_send = federation.send

    def capture(
        contents: Mapping[int, RecordDict], kind: str, group: str, timeout: float
    ) -> dict[int, Answer]:
        if group == "1":
            captured.extend(contents.items())
        return real_send(contents, kind, group, timeout)

    protocol.transport = capture
    outcome = _run_round(federation, protocol, 1, initial_weights(FED))
    assert outcome.weights is not None
    node_id, content = captured[0]
    site = federation.sites[node_id]
    request = secagg_request_from_records(content)
    assert request.binding.run_id == str(RUN)

    def again(run: int) -> RecordDict:
        envelope = Envelope(kind="train", run_id=run, message_id="again", node_id=node_id)
        data = envelope_request(envelope, RecordDict(dict(content.items())))
        return records_from_bytes(handle_request(site.trainer, site.secure, data))

    # redelivered in the same run: the very same answer, no second training or charge
    first_answer = site.secure._answers[(RUN, 1, 1)]
    assert records_to_bytes(again(RUN)) == records_to_bytes(first_answer)
    # replayed into another run: refused, bound to the run it was made for
    status = again(RUN + 1)["status"]
    assert status["status"] == "refused"  # type: ignore[index]
    assert status["code"] == "secagg_binding_mismatch"  # type: ignore[index]
    assert [e.round for e in site.trainer.ledger.entries()] == [1]


def test_a_round_failing_after_masked_inputs_keeps_every_nodes_charge(
    federation: Federation,
) -> None:
    """Every node trained, charged its ledger and sent its masked input; then two go silent
    before unmasking, so the sum cannot be opened and the round fails. The coordinator must
    still record each charge (not aggregated): its ledger is never below a node's own."""
    protocol = _protocol(federation)
    federation.silent_from[1007] = "1.unmask"
    federation.silent_from[1014] = "1.unmask"

    outcome = _run_round(federation, protocol, 1, initial_weights(FED))
    record = round_record(outcome)

    assert outcome.weights is None
    assert record.participants == ()
    for site in federation.sites.values():
        own = site.trainer.ledger.entries()
        assert [(e.round, e.kind) for e in own] == [(1, "train")]  # the input left: charged
        node = record.nodes[site.member.name]
        assert node.status != "ok"
        assert node.charge is not None, node
        charge = node.charge
        assert (charge.noise_multiplier, charge.sample_rate, charge.steps) == (
            own[0].noise_multiplier,
            own[0].sample_rate,
            own[0].steps,
        )
        assert charge.epsilon == pytest.approx(own[0].epsilon_after)
        assert "not aggregated" in node.reason


ONE_WAVE = FED.model_copy(
    update={"secure_aggregation": SecureAggregationSpec(dropout_recovery=False)}
)


def test_one_wave_rounds_equal_plain_fedavg_with_no_unmask_wave(federation: Federation) -> None:
    protocol = _protocol(federation, ONE_WAVE)
    weights = initial_weights(ONE_WAVE)
    for rnd in (1, 2, 3):
        outcome = _run_round(federation, protocol, rnd, weights, ONE_WAVE)
        assert outcome.weights is not None, outcome
        assert not outcome.voided
        assert len(outcome.participants) == 4
        expected = _expected(federation, outcome, weights)
        bound = outcome.details["quantization_error_bound"]
        for got, want in zip(outcome.weights, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=50 * bound + 1e-7)
        assert outcome.details["session"] == 1
        weights = outcome.weights
    # two setup waves, then one wave per round
    assert federation.seen == ["1.setup-1", "1.setup-2", "1", "2", "3"]
    for site in federation.sites.values():
        assert [e.round for e in site.trainer.ledger.entries()] == [1, 2, 3]


def test_a_dropout_voids_a_one_wave_round_and_the_next_goes_on_without_the_node(
    federation: Federation,
) -> None:
    protocol = _protocol(federation, ONE_WAVE)
    first = _run_round(federation, protocol, 1, initial_weights(ONE_WAVE), ONE_WAVE)
    assert first.weights is not None
    gone = 1007
    federation.silent_from[gone] = "2"
    second = _run_round(federation, protocol, 2, first.weights, ONE_WAVE)

    assert second.voided
    assert second.weights is None
    assert second.details["failure"]["code"] == "round_void"
    assert second.details["dropouts"] == ["site1"]
    record = round_record(second)
    assert record.participants == ()
    for site in federation.sites.values():
        node = record.nodes[site.member.name]
        if site.member.node_id == gone:
            assert node.status == "dropped"
            assert node.charge is None
            assert [e.round for e in site.trainer.ledger.entries()] == [1]
            continue
        own = site.trainer.ledger.entries()
        assert [e.round for e in own] == [1, 2]  # the masked input left: charged
        assert node.status == "error"
        assert node.code == "secagg_round_void"
        assert node.charge is not None
        assert "not aggregated" in node.reason
        assert node.charge.epsilon == pytest.approx(own[-1].epsilon_after)

    third = _run_round(federation, protocol, 3, first.weights, ONE_WAVE)
    assert third.weights is not None
    assert not third.voided
    assert third.details["session"] == 1  # same session, no re-keying
    assert [o.member.name for o in third.participants] == ["site0", "site2", "site3"]
    expected = _expected(federation, third, first.weights)
    for got, want in zip(third.weights, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_an_unmask_request_to_a_one_wave_node_is_refused_and_reveals_nothing(
    federation: Federation,
) -> None:
    """A coordinator bending the protocol: after a one-wave round it asks a node for the
    shares that would remove another node's masks, as if that node had dropped."""
    protocol = _protocol(federation, ONE_WAVE)
    outcome = _run_round(federation, protocol, 1, initial_weights(ONE_WAVE), ONE_WAVE)
    assert outcome.weights is not None
    asked, victim = 1000, 1007
    others = tuple(n for n in sorted(federation.sites) if n != victim)
    request = UnmaskRequest(Binding(str(RUN), 1, 1, Stage.UNMASK), asked, others, (victim,))
    envelope = Envelope(kind="secagg", run_id=RUN, message_id="1.unmask", node_id=asked)
    data = envelope_request(envelope, secagg_request_to_records(request))
    site = federation.sites[asked]
    answer = records_from_bytes(handle_request(site.trainer, site.secure, data))

    status = answer["status"]
    assert status["status"] == "refused"  # type: ignore[index]
    assert status["code"] == "secagg_no_unmask"  # type: ignore[index]
    assert not is_secagg(answer)  # no share of any kind in the answer
