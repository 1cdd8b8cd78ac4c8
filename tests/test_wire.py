"""The wire contract: what crosses between ServerApp, relay and trainer."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord

from lepton_fl import wire
from lepton_fl.config import FederationSpec, PrivacySpec


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
    records["config"] = ConfigRecord({"wire-version": 1})

    with pytest.raises(wire.WireError, match="'federation'"):
        wire.instruction_from_records(records)


def test_wire_train_reply_roundtrips() -> None:
    reply = wire.TrainReply(
        status="ok",
        weights=[np.zeros(4, dtype=np.float32)],
        num_examples=120,
        train_loss=0.42,
        train_seconds=0.3,
        evaluation=wire.EvalMetrics(num_examples=40, loss=0.5, accuracy=0.8, roc_auc=0.9),
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
    assert back.charge == reply.charge
    assert back.evaluation == reply.evaluation
    assert back.num_examples == 120
    assert np.array_equal(back.weights[0], reply.weights[0])


def test_wire_refusal_carries_only_the_reason() -> None:
    refusal = wire.TrainReply(status="refused", code="budget_exhausted", reason="over budget")
    records = wire.train_reply_to_records(refusal)
    assert set(records.keys()) == {"status"}
    assert wire.train_reply_from_records(records) == refusal
