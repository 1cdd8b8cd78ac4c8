"""One training round: send the global model, collect updates, aggregate.

`RoundProtocol` is the seam where aggregation happens. `PlainFedAvg` sends each member a
train instruction and averages the returned weights, weighted by example counts. Secure
aggregation plugs in here as another `RoundProtocol` whose aggregate is computed from masked
inputs, without the ServerApp ever holding one node's update.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp import Grid

from coordinator.fl.messaging import NodeFailure, Reply, exchange
from lepton_fl.config import Member
from lepton_fl.wire import (
    RoundInstruction,
    TrainReply,
    WireError,
    instruction_to_records,
    train_reply_from_records,
)

NodeStatus = Literal["ok", "refused", "error", "dropped"]


@dataclass(frozen=True)
class NodeOutcome:
    """What one member did in a round."""

    member: Member
    status: NodeStatus
    code: str = ""
    reason: str = ""
    reply: TrainReply | None = None


@dataclass(frozen=True)
class RoundOutcome:
    """The result of one round: the new global model (None if no update was usable).

    ``voided``: the round aggregated nothing, but the run may go on with the model it had (a
    one-wave secure round that an active node dropped out of)."""

    round: int
    weights: list[np.ndarray] | None
    outcomes: list[NodeOutcome] = field(default_factory=list)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # protocol-specific, for the journal
    voided: bool = False

    @property
    def participants(self) -> list[NodeOutcome]:
        """Members whose update entered the aggregate."""
        return [o for o in self.outcomes if o.status == "ok"]


class RoundProtocol(Protocol):
    """How a round's updates are requested and combined."""

    name: str

    def run_round(
        self,
        grid: Grid,
        members: Sequence[Member],
        instruction: RoundInstruction,
        *,
        timeout: float,
    ) -> RoundOutcome: ...


def weighted_average(updates: Sequence[tuple[Sequence[np.ndarray], int]]) -> list[np.ndarray]:
    """FedAvg: the example-weighted mean of each tensor (accumulated in float64)."""
    if not updates:
        raise ValueError("Cannot average zero updates.")
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("The updates carry no examples; nothing to average.")
    shapes = [w.shape for w in updates[0][0]]
    for weights, _ in updates:
        if [w.shape for w in weights] != shapes:
            raise ValueError("Updates disagree on tensor shapes; the nodes run different models.")
    averaged = []
    for index, shape in enumerate(shapes):
        acc = np.zeros(shape, dtype=np.float64)
        for weights, n in updates:
            acc += weights[index].astype(np.float64) * (n / total)
        averaged.append(acc.astype(updates[0][0][index].dtype))
    return averaged


def classify_reply(member: Member, reply: Reply | None) -> NodeOutcome:
    """Turn a node's reply (or its absence) into an outcome; never raises on bad input."""
    if reply is None:
        return NodeOutcome(member, "dropped", "no_reply", "The node did not answer in time.")
    if isinstance(reply, NodeFailure):
        return NodeOutcome(member, "error", reply.code, reply.reason)
    return classify_records(member, reply)


def classify_records(member: Member, records: RecordDict) -> NodeOutcome:
    """Classify a reply's content: usable update, refusal, or error."""
    try:
        reply = train_reply_from_records(records)
    except WireError as err:
        return NodeOutcome(member, "error", err.code, str(err))
    if reply.status != "ok":
        return NodeOutcome(member, reply.status, reply.code, reply.reason, reply)
    if reply.num_examples <= 0 or not reply.weights:
        return NodeOutcome(member, "error", "empty_update", "The node returned no update.", reply)
    return NodeOutcome(member, "ok", reply=reply)


class PlainFedAvg:
    """Train messages to every member, example-weighted average of the replies."""

    name = "fedavg"

    def run_round(
        self,
        grid: Grid,
        members: Sequence[Member],
        instruction: RoundInstruction,
        *,
        timeout: float,
    ) -> RoundOutcome:
        """Run one round; members that refuse or fail are left out of the average."""
        started = time.monotonic()
        content = instruction_to_records(instruction)
        replies = exchange(
            grid,
            {m.node_id: content for m in members},
            message_type="train",
            group_id=str(instruction.round),
            timeout=timeout,
        )
        outcomes = [classify_reply(m, replies.get(m.node_id)) for m in members]
        usable = [
            (o.reply.weights, o.reply.num_examples)
            for o in outcomes
            if o.reply and o.status == "ok"
        ]
        try:
            weights = weighted_average(usable) if usable else None
        except ValueError as err:
            outcomes = [
                NodeOutcome(o.member, "error", "incompatible_update", str(err), o.reply)
                if o.status == "ok"
                else o
                for o in outcomes
            ]
            weights = None
        return RoundOutcome(instruction.round, weights, outcomes, time.monotonic() - started)
