"""The one place that converts Lepton's typed messages to and from Flower records.

Everything else passes typed dataclasses. Between the ServerApp and a node's executor the
records travel packed, one ConfigRecord per record (`lepton_fl.wire.packing`: fewer objects
for Flower to move); the trainer's local socket service carries the same records as protobuf bytes.

- `lepton_fl.wire.rounds`: train/evaluate instructions and replies, the relay envelope
  (re-exported here);
- `lepton_fl.wire.secagg`: SecAgg+ session messages (import it explicitly);
- `lepton_fl.wire.records`: bytes and the shared decoding checks;
- `lepton_fl.wire.packing`: one ConfigRecord per message, and the wire-version check on arrival.
"""

from lepton_fl.wire.packing import WireVersionError, pack, unpack
from lepton_fl.wire.records import WIRE_VERSION, WireError, records_from_bytes, records_to_bytes
from lepton_fl.wire.rounds import (
    Envelope,
    EvalMetrics,
    EvaluateReply,
    MessageKind,
    PrivacyCharge,
    ReplyStatus,
    RoundInstruction,
    TrainReply,
    envelope_from_request,
    envelope_request,
    evaluate_reply_from_records,
    evaluate_reply_to_records,
    instruction_from_records,
    instruction_to_records,
    train_reply_from_records,
    train_reply_to_records,
)

__all__ = [
    "WIRE_VERSION",
    "Envelope",
    "EvalMetrics",
    "EvaluateReply",
    "MessageKind",
    "PrivacyCharge",
    "ReplyStatus",
    "RoundInstruction",
    "TrainReply",
    "WireError",
    "WireVersionError",
    "envelope_from_request",
    "envelope_request",
    "evaluate_reply_from_records",
    "evaluate_reply_to_records",
    "instruction_from_records",
    "instruction_to_records",
    "pack",
    "records_from_bytes",
    "records_to_bytes",
    "train_reply_from_records",
    "train_reply_to_records",
    "unpack",
]
