"""The wire contract: what crosses between ServerApp, relay and trainer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from lepton_fl import wire
from lepton_fl.config import FederationSpec, PrivacySpec
from lepton_fl.privacy.membership import NUM_BINS, MembershipRelease


@pytest.fixture
def spec() -> FederationSpec:
    return FederationSpec(name="heart", task="heart_disease", privacy=PrivacySpec(target_epsilon=1))


def test_wire_instruction_roundtrips_through_relay_bytes(spec: FederationSpec) -> None:
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float32)]
    records = wire.instruction_to_records(wire.RoundInstruction(spec, 2, weights))
    envelope = wire.Envelope(kind="train", run_id=7, message_id="m-1", node_id=42)

    got_envelope, content = wire.envelope_from_request(wire.envelope_request(envelope, records))
    got = wire.instruction_from_records(content)

    assert got_envelope == envelope
    assert got.federation == spec
    assert got.round == 2
    assert all(np.array_equal(a, b) for a, b in zip(got.weights, weights, strict=True))


def test_wire_altered_federation_is_rejected(spec: FederationSpec) -> None:
    records = wire.instruction_to_records(wire.RoundInstruction(spec, 1))
    looser = spec.model_copy(update={"privacy": PrivacySpec(target_epsilon=50)})
    records["config"]["federation"] = looser.canonical_json()

    with pytest.raises(wire.WireError, match="altered"):
        wire.instruction_from_records(records)


def test_wire_other_version_is_rejected(spec: FederationSpec) -> None:
    records = wire.instruction_to_records(wire.RoundInstruction(spec, 1))
    records["config"]["wire-version"] = 99

    with pytest.raises(wire.WireError, match="not supported"):
        wire.instruction_from_records(records)


@pytest.mark.parametrize("data", [b"\xff\x00garbage", b"\x0a\x05"])
def test_wire_garbage_bytes_raise_wire_error(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.envelope_from_request(data)


def test_wire_missing_record_is_named(spec: FederationSpec) -> None:
    records = wire.instruction_to_records(wire.RoundInstruction(spec, 1))
    records["config"] = ConfigRecord({"wire-version": wire.WIRE_VERSION})

    with pytest.raises(wire.WireError, match="'federation'"):
        wire.instruction_from_records(records)


def test_wire_train_reply_roundtrips() -> None:
    reply = wire.TrainReply(
        status="ok",
        weights=[np.zeros(4, dtype=np.float32)],
        num_examples=120,
        train_seconds=0.3,
        charge=wire.PrivacyCharge(
            noise_multiplier=1.1,
            sample_rate=0.1,
            steps=20,
            delta=1e-5,
            accountant="rdp",
            epsilon=0.7,
            epsilon_budget=3.0,
        ),
    )
    back = wire.train_reply_from_records(
        wire.records_from_bytes(wire.records_to_bytes(wire.train_reply_to_records(reply)))
    )
    assert back == dataclasses.replace(reply, weights=back.weights)
    assert back.num_examples == 120
    metrics = wire.train_reply_to_records(reply)["metrics"]
    assert set(metrics) == {"num-examples", "train-seconds", "node-seconds"}  # no loss (v2)
    assert np.array_equal(back.weights[0], reply.weights[0])


def test_wire_charge_carries_the_nodes_ledger_commitment_or_refuses_a_malformed_one() -> None:
    charge = wire.PrivacyCharge(1.1, 0.1, 20, 1e-5, "rdp", 0.7, 3.0, ledger_row="ab" * 32)
    reply = wire.TrainReply(status="ok", weights=[np.zeros(2, dtype=np.float32)], charge=charge)
    records = wire.train_reply_to_records(reply)
    assert wire.train_reply_from_records(records).charge == charge
    records["privacy"]["ledger-row"] = "not a hash"  # type: ignore[index]
    with pytest.raises(wire.WireError, match="ledger-row"):
        wire.train_reply_from_records(records)


def test_wire_refusal_carries_only_the_reason() -> None:
    refusal = wire.TrainReply(status="refused", code="budget_exhausted", reason="over budget")
    records = wire.train_reply_to_records(refusal)
    assert set(records.keys()) == {"status"}
    assert wire.train_reply_from_records(records) == refusal


def test_wire_evaluate_reply_carries_a_release_and_its_charge() -> None:
    released = wire.EvalMetrics(
        num_examples=81,
        loss=None,  # a DP release has no loss and no ROC-AUC
        accuracy=68 / 81,
        roc_auc=None,
        precision=31 / 36,
        recall=31 / 39,
        f1=2 * 31 / 75,
        confusion=((37, 5), (8, 31)),
    )
    reply = wire.EvaluateReply(
        status="ok",
        evaluation=released,
        epsilon=1.9,
        epsilon_budget=8.0,
        charge=wire.PrivacyCharge(3.3, 1.0, 1, 1e-5, "rdp", 1.9, 8.0),
    )
    records = wire.evaluate_reply_to_records(reply)
    assert "eval-loss" not in records["metrics"]
    assert "eval-roc-auc" not in records["metrics"]
    back = wire.evaluate_reply_from_records(wire.records_from_bytes(wire.records_to_bytes(records)))
    assert back == reply


def test_wire_membership_release_roundtrips_and_a_malformed_one_is_refused() -> None:
    """The audit's histograms travel beside the evaluation; whatever a node (or anyone on
    the path) sends instead of whole non-negative counts of the fixed bins is refused."""
    release = MembershipRelease(
        members=(40, 30, 12, 4, 1)[:NUM_BINS] + (0,) * (NUM_BINS - 5),
        nonmembers=(8, 9, 6, -2, 1)[:NUM_BINS] + (0,) * (NUM_BINS - 5),  # noised: may be < 0
        noise_std=4.6,
    )
    reply = wire.EvaluateReply(status="ok", membership=release)
    records = wire.evaluate_reply_to_records(reply)
    back = wire.evaluate_reply_from_records(wire.records_from_bytes(wire.records_to_bytes(records)))
    assert back.membership == release

    def tampered(**fields: object) -> RecordDict:
        changed = wire.evaluate_reply_to_records(reply)
        metrics = changed["metrics"]
        assert isinstance(metrics, MetricRecord)
        for key, value in fields.items():
            if value is None:
                del metrics[key]
            else:
                metrics[key] = value  # type: ignore[assignment]
        return changed

    cases = {
        "incomplete": tampered(**{"mia-noise-std": None}),
        "invalid": tampered(**{"mia-members": [1.5] * NUM_BINS}),
        "bins": tampered(**{"mia-nonmembers": [1, 2, 3]}),
        "whole numbers": tampered(**{"mia-members": [10**10] + [0] * (NUM_BINS - 1)}),
        "noise_std": tampered(**{"mia-noise-std": -1.0}),
    }
    for words, records in cases.items():
        with pytest.raises(wire.WireError, match=words):
            wire.evaluate_reply_from_records(records)


def test_wire_release_noised_to_nothing_decodes() -> None:
    empty = wire.EvalMetrics(0, None, 0.0, None, 0.0, 0.0, 0.0, ((0, 0), (0, 0)))
    reply = wire.EvaluateReply(status="ok", evaluation=empty)
    assert wire.evaluate_reply_from_records(wire.evaluate_reply_to_records(reply)) == reply


def test_wire_older_version_is_refused_with_the_fix() -> None:
    spec = FederationSpec(name="heart", task="heart_disease", privacy=PrivacySpec(target_epsilon=1))
    records = wire.instruction_to_records(wire.RoundInstruction(spec, 1))
    records["config"]["wire-version"] = (
        1  # a node or coordinator from before train replies lost their loss
    )
    with pytest.raises(wire.WireError, match="Wire version 1 is not supported.*upgrade"):
        wire.instruction_from_records(records)
