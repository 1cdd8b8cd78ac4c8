"""Round messages: train/evaluate instructions and replies, and the relay envelope.

Everything else passes the dataclasses below. The same encoding travels twice: between the
ServerApp and a node's relay (as Flower `RecordDict`s inside Flower messages) and between
the relay and the node's trainer daemon (as serialised `RecordDict` protobuf bytes over a
local gRPC socket), so the relay never needs to understand the content it forwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues

from lepton_fl.config import FederationSpec
from lepton_fl.metrics import (
    ClassificationMetrics,
    Confusion,
    rates_from_confusion,
    validate_confusion,
)
from lepton_fl.privacy.membership import MembershipRelease
from lepton_fl.wire.records import (
    WIRE_VERSION,
    WireError,
    _check_version,
    _config,
    _get,
    records_from_bytes,
    records_to_bytes,
)

MessageKind = Literal["train", "evaluate", "secagg"]
ReplyStatus = Literal["ok", "refused", "error"]

_ARRAYS = "arrays"
_CONFIG = "config"
_METRICS = "metrics"
_STATUS = "status"
_CHARGE = "privacy"
_ENVELOPE = "lepton.envelope"


@dataclass(frozen=True)
class RoundInstruction:
    """What the ServerApp asks of a node: train (or evaluate) this model for this round."""

    federation: FederationSpec
    round: int
    weights: list[np.ndarray] = field(default_factory=list)  # empty: initialise from the seed
    # The admin service's signed run authorization (lepton_fl.crypto.run_authorization),
    # forwarded unchanged with every message of the run; None: an unsigned run.
    authorization: str | None = None


@dataclass(frozen=True)
class EvalMetrics:
    """Evaluation figures of one model on one node's held-out split.

    What a node sends is a DP release (``lepton_fl.privacy.evaluation``): noised confusion
    counts and the rates that follow from them; ``num_examples`` is the noised counts' sum
    (it may be 0), ``loss`` and ``roc_auc`` are ``None`` (they stay at the node). The
    figures follow `lepton_fl.metrics` (class 1 for two classes, macro averages for more;
    ``confusion[i][j]`` counts true class ``i`` predicted as ``j``). ``precision``,
    ``recall``, ``f1`` and ``confusion`` travel together: all four or none. Decoding checks
    them (see `_eval_from`).
    """

    num_examples: int
    loss: float | None
    accuracy: float
    roc_auc: float | None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    confusion: Confusion | None = None

    def classification(self) -> ClassificationMetrics | None:
        """The figures as `ClassificationMetrics` (for `aggregate_metrics`); ``None`` when
        this node sent no precision, recall, F1 and confusion matrix."""
        if self.precision is None or self.recall is None or self.f1 is None:
            return None
        if self.confusion is None:
            return None
        return ClassificationMetrics(
            num_examples=self.num_examples,
            accuracy=self.accuracy,
            precision=self.precision,
            recall=self.recall,
            f1=self.f1,
            roc_auc=self.roc_auc,
            confusion=self.confusion,
        )


@dataclass(frozen=True)
class PrivacyCharge:
    """What one round cost a node, and where its ledger stands after recording it."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    epsilon: float  # the node's total epsilon on this dataset, history included
    epsilon_budget: float
    # the node's commitment to this charge's row in its hash-chained ledger (HMAC-SHA256 of
    # the row hash under a key the node keeps): a ledger rewritten afterwards no longer gives
    # it, and it reveals nothing of the row (None: a node older than ledger schema 5)
    ledger_row: str | None = None


@dataclass(frozen=True)
class TrainReply:
    """A node's answer to a train instruction: the update, its example count and the round's
    privacy charge. No loss and no evaluation (wire version 2): the training loss is computed
    on private rows without noise, so it stays in the node's log."""

    status: ReplyStatus
    code: str = ""
    reason: str = ""
    weights: list[np.ndarray] = field(default_factory=list)
    num_examples: int = 0
    train_seconds: float = 0.0  # the DP-SGD loop alone
    node_seconds: float = 0.0  # the trainer's whole handling: checks, ledger, training
    charge: PrivacyCharge | None = None


@dataclass(frozen=True)
class EvaluateReply:
    """A node's answer to an evaluate instruction: the DP release of its evaluation, the
    release's charge, and the node's epsilon on the dataset (the release included)."""

    status: ReplyStatus
    code: str = ""
    reason: str = ""
    evaluation: EvalMetrics | None = None
    epsilon: float | None = None
    epsilon_budget: float | None = None
    charge: PrivacyCharge | None = None
    # the membership-inference audit's noised loss histograms, released jointly with the
    # evaluation's counts when the spec asks for it (lepton_fl.privacy.membership)
    membership: MembershipRelease | None = None


@dataclass(frozen=True)
class Envelope:
    """Who sent a message to the trainer, as the relay saw it in Flower's metadata."""

    kind: MessageKind
    run_id: int
    message_id: str
    node_id: int


# --- instructions -------------------------------------------------------------------------


def instruction_to_records(instruction: RoundInstruction) -> RecordDict:
    """Encode a train/evaluate instruction as a Flower RecordDict."""
    config = ConfigRecord(
        {
            "wire-version": WIRE_VERSION,
            "federation": instruction.federation.canonical_json(),
            "federation-digest": instruction.federation.digest(),
            "round": instruction.round,
        }
    )
    if instruction.authorization is not None:
        config["authorization"] = instruction.authorization
    return RecordDict({_ARRAYS: ArrayRecord(list(instruction.weights)), _CONFIG: config})


def instruction_from_records(records: RecordDict) -> RoundInstruction:
    """Decode and validate an instruction; a tampered or foreign message raises WireError."""
    config = _config(records, _CONFIG)
    _check_version(config)
    raw = _get(config, "federation", str)
    try:
        federation = FederationSpec.model_validate_json(raw)
    except ValueError as err:
        raise WireError(f"The federation spec in the message is invalid: {err}") from err
    if federation.digest() != _get(config, "federation-digest", str):
        raise WireError("The federation spec does not match its digest; the message was altered.")
    weights = _arrays(records)
    authorization = _get(config, "authorization", str) if "authorization" in config else None
    return RoundInstruction(
        federation=federation,
        round=_get(config, "round", int),
        weights=weights,
        authorization=authorization,
    )


# --- replies ------------------------------------------------------------------------------


def train_reply_to_records(reply: TrainReply) -> RecordDict:
    """Encode a train reply. Only aggregate-safe numbers leave the node."""
    records = RecordDict({_STATUS: _status_record(reply.status, reply.code, reply.reason)})
    if reply.status != "ok":
        return records
    records[_ARRAYS] = ArrayRecord(list(reply.weights))
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": reply.num_examples,
        "train-seconds": reply.train_seconds,
        "node-seconds": reply.node_seconds,
    }
    records[_METRICS] = MetricRecord(metrics)
    if reply.charge is not None:
        records[_CHARGE] = _charge_record(reply.charge)
    return records


def train_reply_from_records(records: RecordDict) -> TrainReply:
    """Decode a train reply."""
    status, code, reason = _status(records)
    if status != "ok":
        return TrainReply(status=status, code=code, reason=reason)
    metrics = _metrics(records)
    charge = _charge(records) if _CHARGE in records else None
    return TrainReply(
        status=status,
        weights=_arrays(records),
        num_examples=int(metrics["num-examples"]),
        train_seconds=float(metrics["train-seconds"]),
        node_seconds=float(metrics.get("node-seconds", 0.0)),
        charge=charge,
    )


def evaluate_reply_to_records(reply: EvaluateReply) -> RecordDict:
    """Encode an evaluate reply."""
    records = RecordDict({_STATUS: _status_record(reply.status, reply.code, reply.reason)})
    metrics: dict[str, MetricRecordValues] = {}
    if reply.evaluation is not None:
        metrics.update(_eval_metrics(reply.evaluation))
    if reply.epsilon is not None:
        metrics["epsilon"] = reply.epsilon
    if reply.epsilon_budget is not None:
        metrics["epsilon-budget"] = reply.epsilon_budget
    if reply.membership is not None:
        metrics["mia-members"] = list(reply.membership.members)
        metrics["mia-nonmembers"] = list(reply.membership.nonmembers)
        metrics["mia-noise-std"] = reply.membership.noise_std
    records[_METRICS] = MetricRecord(metrics)
    if reply.charge is not None:
        records[_CHARGE] = _charge_record(reply.charge)
    return records


def evaluate_reply_from_records(records: RecordDict) -> EvaluateReply:
    """Decode an evaluate reply."""
    status, code, reason = _status(records)
    metrics = _metrics(records) if _METRICS in records else {}
    epsilon = metrics.get("epsilon")
    budget = metrics.get("epsilon-budget")
    return EvaluateReply(
        status=status,
        code=code,
        reason=reason,
        evaluation=_eval_from(records),
        epsilon=None if epsilon is None else float(epsilon),
        epsilon_budget=None if budget is None else float(budget),
        charge=_charge(records) if _CHARGE in records else None,
        membership=_membership_from(records),
    )


_MEMBERSHIP = ("mia-members", "mia-nonmembers", "mia-noise-std")


def _whole(value: object) -> bool:
    """An int that is not a bool (a count as Flower carries it)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _membership_from(records: RecordDict) -> MembershipRelease | None:
    """Decode a node's membership-audit release (all three fields or none), checked."""
    raw = records.get(_METRICS)
    if not isinstance(raw, MetricRecord):
        return None
    present = [key for key in _MEMBERSHIP if key in raw]
    if not present:
        return None
    if len(present) != len(_MEMBERSHIP):
        missing = ", ".join(repr(k) for k in _MEMBERSHIP if k not in raw)
        raise WireError(f"The membership-audit release is incomplete: {missing} missing.")
    members, nonmembers, std = (raw[key] for key in _MEMBERSHIP)
    if not isinstance(members, list) or not isinstance(nonmembers, list):
        raise WireError("Fields 'mia-members' and 'mia-nonmembers' must be lists of counts.")
    if isinstance(std, bool) or not isinstance(std, int | float):
        raise WireError(f"Field 'mia-noise-std' must be a number, got {std!r}.")
    try:
        if not all(_whole(c) for c in (*members, *nonmembers)):
            raise ValueError("the counts must be whole numbers")
        return MembershipRelease(
            tuple(int(c) for c in members), tuple(int(c) for c in nonmembers), float(std)
        )
    except ValueError as err:
        raise WireError(f"The membership-audit release is invalid: {err}.") from err


# --- relay <-> trainer bytes --------------------------------------------------------------


def envelope_request(envelope: Envelope, content: RecordDict) -> bytes:
    """Serialise a Flower message's content plus its envelope for the trainer socket."""
    records = RecordDict(dict(content.items()))
    records[_ENVELOPE] = ConfigRecord(
        {
            "wire-version": WIRE_VERSION,
            "kind": envelope.kind,
            "run-id": str(envelope.run_id),
            "message-id": envelope.message_id,
            "node-id": str(envelope.node_id),
        }
    )
    return records_to_bytes(records)


def envelope_from_request(data: bytes) -> tuple[Envelope, RecordDict]:
    """Split bytes from the relay into the envelope and the original content."""
    records = records_from_bytes(data)
    config = _config(records, _ENVELOPE)
    _check_version(config)
    kind = _get(config, "kind", str)
    kinds: dict[str, MessageKind] = {"train": "train", "evaluate": "evaluate", "secagg": "secagg"}
    if kind not in kinds:
        raise WireError(f"Unknown message kind {kind!r}; expected one of {', '.join(kinds)}.")
    envelope = Envelope(
        kind=kinds[kind],
        run_id=int(_get(config, "run-id", str)),
        message_id=_get(config, "message-id", str),
        node_id=int(_get(config, "node-id", str)),
    )
    del records[_ENVELOPE]
    return envelope, records


# --- helpers ------------------------------------------------------------------------------


def _status_record(status: ReplyStatus, code: str, reason: str) -> ConfigRecord:
    return ConfigRecord({"status": status, "code": code, "reason": reason})


def _status(records: RecordDict) -> tuple[ReplyStatus, str, str]:
    config = _config(records, _STATUS)
    status = _get(config, "status", str)
    if status not in ("ok", "refused", "error"):
        raise WireError(f"Unknown reply status {status!r}.")
    typed: ReplyStatus = "ok" if status == "ok" else ("refused" if status == "refused" else "error")
    return typed, _get(config, "code", str), _get(config, "reason", str)


_EVAL_EXTRA = ("eval-precision", "eval-recall", "eval-f1", "eval-confusion", "eval-num-classes")


def _eval_metrics(evaluation: EvalMetrics) -> dict[str, MetricRecordValues]:
    metrics: dict[str, MetricRecordValues] = {
        "eval-num-examples": evaluation.num_examples,
        "eval-accuracy": evaluation.accuracy,
    }
    if evaluation.loss is not None:
        metrics["eval-loss"] = evaluation.loss
    if evaluation.roc_auc is not None:
        metrics["eval-roc-auc"] = evaluation.roc_auc
    extra = (evaluation.precision, evaluation.recall, evaluation.f1, evaluation.confusion)
    if any(v is not None for v in extra):
        if (
            evaluation.precision is None
            or evaluation.recall is None
            or evaluation.f1 is None
            or evaluation.confusion is None
        ):
            raise ValueError("precision, recall, f1 and confusion must be given together")
        metrics["eval-precision"] = evaluation.precision
        metrics["eval-recall"] = evaluation.recall
        metrics["eval-f1"] = evaluation.f1
        metrics["eval-num-classes"] = len(evaluation.confusion)
        metrics["eval-confusion"] = [int(v) for row in evaluation.confusion for v in row]
    return metrics


def _eval_from(records: RecordDict) -> EvalMetrics | None:
    """Decode a node's evaluation, checking it: a whole number of examples (positive unless
    it comes with a confusion matrix: a noised release may count 0), rates in [0, 1], and
    (when present) a square confusion matrix of non-negative counts that sums to the number
    of examples and agrees with the accuracy, precision, recall and F1. The loss is
    optional (a DP release has none)."""
    metrics = _metrics(records) if _METRICS in records else {}
    if "eval-accuracy" not in metrics:
        return None
    raw = records[_METRICS]
    if not isinstance(raw, MetricRecord):  # _metrics checked it already; this informs mypy
        raise WireError(f"Record {_METRICS!r} is missing or not a MetricRecord.")
    n = raw.get("eval-num-examples")
    if (
        isinstance(n, bool)
        or not isinstance(n, int)
        or n < 0
        or (n == 0 and "eval-confusion" not in raw)
    ):
        raise WireError(f"Field 'eval-num-examples' must be a positive whole number, got {n!r}.")
    loss = metrics.get("eval-loss")
    roc = metrics.get("eval-roc-auc")
    for key in ("eval-accuracy", "eval-roc-auc", "eval-precision", "eval-recall", "eval-f1"):
        if key in metrics and not 0.0 <= metrics[key] <= 1.0:
            raise WireError(f"Field {key!r} must lie in [0, 1], got {metrics[key]!r}.")
    present = [key for key in _EVAL_EXTRA if key in raw]
    if not present:
        return EvalMetrics(
            num_examples=n,
            loss=None if loss is None else float(loss),
            accuracy=float(metrics["eval-accuracy"]),
            roc_auc=None if roc is None else float(roc),
        )
    if len(present) != len(_EVAL_EXTRA):
        missing = ", ".join(repr(k) for k in _EVAL_EXTRA if k not in raw)
        raise WireError(f"The evaluation is incomplete: {missing} missing.")
    k = raw["eval-num-classes"]
    flat = raw["eval-confusion"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise WireError(f"Field 'eval-num-classes' must be a whole number >= 2, got {k!r}.")
    if not isinstance(flat, list) or len(flat) != k * k:
        got = len(flat) if isinstance(flat, list) else type(flat).__name__
        raise WireError(f"Field 'eval-confusion' must hold {k} x {k} = {k * k} counts, got {got}.")
    try:
        confusion = validate_confusion(
            [flat[i * k : (i + 1) * k] for i in range(k)], num_examples=n
        )
    except ValueError as err:
        raise WireError(f"Field 'eval-confusion' is invalid: {err}.") from err
    rates = rates_from_confusion(confusion) if n > 0 else (0.0, 0.0, 0.0, 0.0)
    expected = dict(
        zip(("eval-accuracy", "eval-precision", "eval-recall", "eval-f1"), rates, strict=True)
    )
    for key, value in expected.items():
        if abs(metrics[key] - value) > 1e-9:
            raise WireError(
                f"Field {key!r} ({metrics[key]}) disagrees with the confusion matrix, which "
                f"gives {value}; the node computed it another way."
            )
    return EvalMetrics(
        num_examples=n,
        loss=None if loss is None else float(loss),
        accuracy=float(metrics["eval-accuracy"]),
        roc_auc=None if roc is None else float(roc),
        precision=float(metrics["eval-precision"]),
        recall=float(metrics["eval-recall"]),
        f1=float(metrics["eval-f1"]),
        confusion=confusion,
    )


def _charge_record(charge: PrivacyCharge) -> ConfigRecord:
    return ConfigRecord(
        {
            "noise-multiplier": charge.noise_multiplier,
            "sample-rate": charge.sample_rate,
            "steps": charge.steps,
            "delta": charge.delta,
            "accountant": charge.accountant,
            "epsilon": charge.epsilon,
            "epsilon-budget": charge.epsilon_budget,
            **({} if charge.ledger_row is None else {"ledger-row": charge.ledger_row}),
        }
    )


def _charge(records: RecordDict) -> PrivacyCharge:
    config = _config(records, _CHARGE)
    return PrivacyCharge(
        noise_multiplier=float(_get(config, "noise-multiplier", float)),
        sample_rate=float(_get(config, "sample-rate", float)),
        steps=_get(config, "steps", int),
        delta=float(_get(config, "delta", float)),
        accountant=_get(config, "accountant", str),
        epsilon=float(_get(config, "epsilon", float)),
        epsilon_budget=float(_get(config, "epsilon-budget", float)),
        ledger_row=_ledger_row(config),
    )


def _ledger_row(config: ConfigRecord) -> str | None:
    """The node's commitment to the charge's ledger row: 64 hex digits, or absent."""
    if "ledger-row" not in config:
        return None
    value = _get(config, "ledger-row", str)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise WireError("Field 'ledger-row' must be an HMAC-SHA256: 64 lowercase hex digits.")
    return value


def _arrays(records: RecordDict) -> list[np.ndarray]:
    record = records.get(_ARRAYS)
    if record is None:
        return []
    if not isinstance(record, ArrayRecord):
        raise WireError(f"Record {_ARRAYS!r} must be an ArrayRecord.")
    return list(record.to_numpy_ndarrays())


def _metrics(records: RecordDict) -> dict[str, float]:
    record = records.get(_METRICS)
    if not isinstance(record, MetricRecord):
        raise WireError(f"Record {_METRICS!r} is missing or not a MetricRecord.")
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, int | float):
            out[key] = float(value)
    return out
