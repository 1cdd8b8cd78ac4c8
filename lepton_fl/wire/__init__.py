"""The one place that converts Lepton's typed messages to and from Flower records.

Everything else passes typed dataclasses. The same encoding travels twice: between the
ServerApp and a node's relay (as Flower `RecordDict`s inside Flower messages) and between
the relay and the node's trainer daemon (as serialised `RecordDict` protobuf bytes over a
local gRPC socket), so the relay never needs to understand the content it forwards.

- `lepton_fl.wire.rounds`: train/evaluate instructions and replies, the relay envelope
  (re-exported here);
- `lepton_fl.wire.secagg`: SecAgg+ session messages (import it explicitly);
- `lepton_fl.wire.records`: bytes and the shared decoding checks.
"""

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
    "envelope_from_request",
    "envelope_request",
    "evaluate_reply_from_records",
    "evaluate_reply_to_records",
    "instruction_from_records",
    "instruction_to_records",
    "records_from_bytes",
    "records_to_bytes",
    "train_reply_from_records",
    "train_reply_to_records",
]
