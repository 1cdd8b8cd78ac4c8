"""A coordinator that bends secure aggregation (issue 10), against the node's real classes.

The two-session difference attack: a coordinator sets up two secure-aggregation sessions for
the same round, one with nodes A, B, C, D and one with A, B, C only, before the round is
trained. If every node answered both, the two decoded sums would differ by exactly D's
(weighted) update. A node answers a round in one session only: the second session is refused with
``secagg_round_already_answered``, and a redelivery of the first session's message still
gets the same bytes.

Substituted keys and invented participants: every node signs its advertised keys with its
enrolled key, and checks the others' against the members' enrolled keys in the run's signed
authorization; the honest nodes refuse the session (``secagg_bad_signature``,
``secagg_not_a_member``) before any share or update leaves them.

Training-set sizes: a node advertises a power-of-two bucket and sends its example count only
inside the masked vector; the coordinator learns the survivors' total.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pytest
import torch
from flwr.app import ConfigRecord, RecordDict
from signing_support import pin_key, signed, write_node_key

from client_node.ledger import Ledger
from client_node.settings import NodeSettings
from client_node.trainer.core import NodeTrainer
from client_node.trainer.secure import SecureAggregation
from client_node.trainer.service import handle_request
from coordinator.fl.rounds import NodeOutcome
from coordinator.fl.secure_rounds import Answer, SecAggFedAvg
from lepton_fl.config import FederationSpec, Member, PrivacySpec, TrainingSpec
from lepton_fl.datasets import load_partition
from lepton_fl.model_init import initial_weights
from lepton_fl.secagg import ErrorCode, PublicKeys, SecAggError, ShareKeysRequest
from lepton_fl.secagg.crypto import generate_key_pair
from lepton_fl.secagg.fedavg import size_bucket
from lepton_fl.wire import (
    Envelope,
    envelope_request,
    records_from_bytes,
    train_reply_from_records,
)
from lepton_fl.wire.secagg import secagg_request_from_records, secagg_request_to_records

FED = FederationSpec(
    name="clinic-fed",
    task="breast_cancer",
    rounds=2,
    privacy=PrivacySpec(target_epsilon=3.0, delta=1e-5),
    training=TrainingSpec(local_epochs=1, batch_size=32, learning_rate=0.3),
)
RUN = 77


@dataclass
class Site:
    member: Member
    trainer: NodeTrainer
    secure: SecureAggregation


@dataclass
class Federation:
    sites: dict[int, Site]
    delivered: dict[tuple[int, str], tuple[RecordDict, bytes]]  # (node, group) -> in, out

    def send(
        self, contents: Mapping[int, RecordDict], message_type: str, group_id: str, timeout: float
    ) -> dict[int, Answer]:
        del timeout
        answers: dict[int, Answer] = {}
        for node_id, content in contents.items():
            if node_id not in self.sites:  # a node the coordinator invented: nobody answers
                continue
            answer = self.deliver(node_id, content, message_type, group_id)
            self.delivered[(node_id, group_id)] = (content, answer)
            answers[node_id] = records_from_bytes(answer)
        return answers

    def deliver(self, node_id: int, content: RecordDict, message_type: str, group: str) -> bytes:
        site = self.sites[node_id]
        kind: Literal["train", "secagg"] = "train" if message_type == "train" else "secagg"
        envelope = Envelope(kind=kind, run_id=RUN, message_id=group, node_id=node_id)
        data = envelope_request(envelope, RecordDict(dict(content.items())))
        return handle_request(site.trainer, site.secure, data)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    ledgers: list[Ledger] = []
    sites: dict[int, Site] = {}
    for index in range(4):
        home = tmp_path / f"site{index}"
        home.mkdir()
        (home / "ca.pem").write_text("unused here")
        node_id = 2000 + 11 * index
        settings = NodeSettings.model_validate(
            {
                "node": {"name": f"site{index}", "state_dir": str(home)},
                "data": {"task": "breast_cancer", "partition": f"site-{index}-of-4"},
                "privacy": {"epsilon_budget": 10.0, "federations": ["clinic-fed"]},
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
    yield Federation(sites, {})
    for ledger in ledgers:
        ledger.close()


def test_a_second_session_for_an_answered_round_is_refused(federation: Federation) -> None:
    everyone = [s.member for s in federation.sites.values()]
    others = everyone[:3]
    weights = initial_weights(FED)
    instruction = signed(FED, 1, weights, node_ids=federation.sites)
    with_d = SecAggFedAvg(FED, run_id=str(RUN), transport=federation.send)
    without_d = SecAggFedAvg(FED, run_id=str(RUN), transport=federation.send)
    without_d._sessions = 1  # its session is number 2
    # The coordinator sets up a session of A, B, C for round 1 and, before round 1 is
    # trained, runs round 1 in a session of A, B, C, D.
    attack = without_d._setup(others, instruction, {}, timeout=60)
    first = with_d.run_round(None, everyone, instruction, timeout=60)
    assert first.weights is not None
    assert first.details["session"] == 1
    outcomes: dict[int, NodeOutcome] = {}
    by_id = {m.node_id: m for m in others}
    with pytest.raises(SecAggError) as err:  # no second sum: nothing to subtract
        without_d._aggregate(attack, by_id, instruction, outcomes, 60, {}, set())
    assert err.value.code is ErrorCode.TOO_FEW_SURVIVORS
    assert {o.status for o in outcomes.values()} == {"refused"}
    assert {o.code for o in outcomes.values()} == {"secagg_round_already_answered"}
    for site in federation.sites.values():  # one training, one charge per node
        assert [e.round for e in site.trainer.ledger.entries()] == [1]

    # A redelivery of session 1's wave A gets the same bytes back, and no second training.
    node_id = everyone[0].node_id
    content, answer = federation.delivered[(node_id, "1")]
    assert federation.deliver(node_id, content, "train", "1-redelivered") == answer
    assert len(federation.sites[node_id].trainer.ledger.entries()) == 1


def test_a_substituted_key_advertisement_is_refused_by_every_honest_node(
    federation: Federation,
) -> None:
    everyone = [s.member for s in federation.sites.values()]
    victim = everyone[3].node_id
    mine = PublicKeys(enc=generate_key_pair()[1], masks=(generate_key_pair()[1],) * FED.rounds)
    honest_send = federation.send

    def substitute(
        contents: Mapping[int, RecordDict], message_type: str, group: str, timeout: float
    ) -> dict[int, Answer]:
        if group.endswith("setup-2"):  # the coordinator puts its own keys in the victim's place
            forged = {}
            for node_id, content in contents.items():
                request = secagg_request_from_records(content)
                assert isinstance(request, ShareKeysRequest)
                keys = {**request.public_keys, victim: mine}
                forged[node_id] = secagg_request_to_records(replace(request, public_keys=keys))
            contents = forged
        return honest_send(contents, message_type, group, timeout)

    protocol = SecAggFedAvg(FED, run_id=str(RUN), transport=substitute)
    instruction = signed(FED, 1, initial_weights(FED), node_ids=federation.sites)
    outcome = protocol.run_round(None, everyone, instruction, timeout=60)

    assert outcome.weights is None
    codes = {o.member.node_id: o.code for o in outcome.outcomes}
    assert {codes[m.node_id] for m in everyone[:3]} == {"secagg_bad_signature"}
    for site in federation.sites.values():  # nothing trained, nothing charged
        assert site.trainer.ledger.entries() == []


def test_an_invented_participant_is_refused_by_every_honest_node(
    federation: Federation,
) -> None:
    everyone = [s.member for s in federation.sites.values()]
    ghost = Member(name="ghost", node_id=4242)  # a node the coordinator controls
    protocol = SecAggFedAvg(FED, run_id=str(RUN), transport=federation.send)
    instruction = signed(FED, 1, initial_weights(FED), node_ids=federation.sites)
    outcome = protocol.run_round(None, [*everyone, ghost], instruction, timeout=60)

    assert outcome.weights is None
    codes = {o.member.node_id: o.code for o in outcome.outcomes}
    assert {codes[m.node_id] for m in everyone} == {"secagg_not_a_member"}


def test_exact_training_set_sizes_never_leave_in_the_clear(federation: Federation) -> None:
    everyone = [s.member for s in federation.sites.values()]
    protocol = SecAggFedAvg(FED, run_id=str(RUN), transport=federation.send)
    instruction = signed(FED, 1, initial_weights(FED), node_ids=federation.sites)
    outcome = protocol.run_round(None, everyone, instruction, timeout=60)
    assert outcome.weights is not None
    sizes = {n: s.trainer._replies[(RUN, 1)].num_examples for n, s in federation.sites.items()}
    for (node_id, group), (_, answer) in federation.delivered.items():
        content = records_from_bytes(answer)
        if group.endswith("setup-1"):  # a coarse bucket, not the size
            fedavg = content["lepton.fedavg"]
            assert isinstance(fedavg, ConfigRecord)
            assert dict(fedavg) == {"size-bucket": size_bucket(sizes[node_id])}
        if group == "1":  # the masked input: the count is inside the masked vector only
            assert train_reply_from_records(content).num_examples == 0
    assert outcome.details["examples"] == sum(sizes.values())  # what FedAvg needs: the sum


def test_nothing_in_the_clear_tells_sizes_within_a_bucket_apart(federation: Federation) -> None:
    """The clear part of a masked-input reply (the charge, the epsilon, timings) is the same
    for nodes of different sizes in one bucket: each samples at q = batch / bucket, so the
    charge depends on the public bucket only, and no timing leaves."""
    everyone = [s.member for s in federation.sites.values()]
    protocol = SecAggFedAvg(FED, run_id=str(RUN), transport=federation.send)
    instruction = signed(FED, 1, initial_weights(FED), node_ids=federation.sites)
    assert protocol.run_round(None, everyone, instruction, timeout=60).weights is not None
    sizes = {n: s.trainer.split.train.labels.shape[0] for n, s in federation.sites.items()}
    assert len(set(sizes.values())) > 1  # different sizes ...
    assert len({size_bucket(n) for n in sizes.values()}) == 1  # ... in one bucket
    bucket = size_bucket(next(iter(sizes.values())))
    clear = {
        node_id: train_reply_from_records(records_from_bytes(answer))
        for (node_id, group), (_, answer) in federation.delivered.items()
        if group == "1"
    }
    assert set(clear) == set(sizes)
    for reply in clear.values():
        assert (reply.num_examples, reply.train_seconds, reply.node_seconds) == (0, 0.0, 0.0)
        assert reply.charge is not None
        assert reply.charge.sample_rate == FED.training.batch_size / bucket
        assert reply.charge.steps == FED.training.local_epochs * (bucket // FED.training.batch_size)
    # sigma, q, steps, epsilon: all equal. Each node's commitment to its ledger row differs
    # (an HMAC under the node's own secret key): it tells nothing of the row without the key.
    public = {dataclasses.replace(r.charge, ledger_row=None) for r in clear.values() if r.charge}
    assert len(public) == 1
    commitments = [r.charge.ledger_row for r in clear.values() if r.charge]
    assert all(c is not None and len(c) == 64 for c in commitments)
    assert len(set(commitments)) == len(commitments)
    for node_id, site in federation.sites.items():  # the ledger holds what ran, exactly
        (entry,) = site.trainer.ledger.entries()
        assert entry.step.sample_rate == FED.training.batch_size / bucket
        assert entry.num_examples == sizes[node_id]


def test_a_node_whose_key_is_not_the_enrolled_one_stays_out(federation: Federation) -> None:
    everyone = [s.member for s in federation.sites.values()]
    odd = federation.sites[everyone[0].node_id]
    write_node_key(odd.trainer.settings.auth.private_key.parent, 1)  # not its enrolled key
    protocol = SecAggFedAvg(FED, run_id=str(RUN), transport=federation.send)
    instruction = signed(FED, 1, initial_weights(FED), node_ids=federation.sites)
    outcome = protocol.run_round(None, everyone, instruction, timeout=60)

    assert outcome.weights is not None  # the three others go on
    codes = {o.member.node_id: o.code for o in outcome.outcomes}
    assert codes[everyone[0].node_id] == "secagg_no_identity"
    assert odd.trainer.ledger.entries() == []
