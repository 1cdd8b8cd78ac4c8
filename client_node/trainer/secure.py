"""The node's half of secure aggregation, inside the long-lived trainer.

One :class:`SecAggNode` per (run, session) holds the node's session keys; they never leave
this process. The four message kinds of a session:

* advertise keys (setup): the federation is checked against the site policy and budget
  (a node that would refuse never joins); the session's public parameters are checked
  against the node's own derivation from the federation spec; the node advertises its keys
  and its training-set size (its FedAvg weight);
* share keys (setup): Shamir shares of every round's secrets, encrypted per holder;
* masked input (wave A of a round): train with DP-SGD (the charge is recorded in the ledger
  before anything leaves), then send ``[w * (W_i - W) / scale, w]`` masked;
* unmask (wave B): reveal the round's shares the protocol allows.

A refused or malformed request is answered with a reason; the session's state machine
(lepton_fl.secagg) refuses anything out of order, replayed, or bound to another run, round
or stage. A redelivered masked-input request gets the same bytes back, never a second
training.
"""

from __future__ import annotations

import dataclasses
import threading

from flwr.app import RecordDict

from client_node.trainer.core import NodeTrainer, RequestRefusedError
from lepton_fl.config import FederationSpec
from lepton_fl.secagg import (
    AdvertiseKeysRequest,
    ErrorCode,
    MaskedInputRequest,
    Request,
    SecAggError,
    SecAggNode,
    ShareKeysRequest,
    UnmaskRequest,
)
from lepton_fl.secagg.fedavg import encode_update, session_config, vector_length
from lepton_fl.wire import (
    Envelope,
    RoundInstruction,
    TrainReply,
    WireError,
    instruction_from_records,
    train_reply_to_records,
)
from lepton_fl.wire.secagg import (
    put_num_examples,
    round_weighting_from,
    secagg_reply_to_records,
    secagg_request_from_records,
)

MAX_SESSIONS = 64


@dataclasses.dataclass
class _Session:
    node: SecAggNode
    first_round: int  # the federation round of the session's round 1
    federation_digest: str


def refusal(code: str, reason: str) -> RecordDict:
    """A reply that says why the node did not take part."""
    return train_reply_to_records(TrainReply(status="refused", code=code, reason=reason))


class SecureAggregation:
    """SecAgg+ sessions of one node, on top of its :class:`NodeTrainer`."""

    def __init__(self, trainer: NodeTrainer) -> None:
        self.trainer = trainer
        self._lock = threading.Lock()
        self._sessions: dict[tuple[int, int], _Session] = {}
        self._answers: dict[tuple[int, int, int], RecordDict] = {}

    def handle(self, envelope: Envelope, content: RecordDict) -> RecordDict:
        """Answer one SecAgg message (any kind); never raises on bad input."""
        try:
            request = secagg_request_from_records(content)
        except WireError as err:
            return refusal(err.code, str(err))
        with self._lock:
            try:
                return self._dispatch(envelope, content, request)
            except SecAggError as err:
                return refusal(f"secagg_{err.code.value}", err.message)
            except RequestRefusedError as err:
                return refusal(err.code, err.reason)
            except (WireError, ValueError) as err:
                return refusal("malformed_message", str(err))

    def _dispatch(self, envelope: Envelope, content: RecordDict, request: Request) -> RecordDict:
        run = envelope.run_id
        if request.binding.run_id != str(run):
            raise SecAggError(
                ErrorCode.BINDING_MISMATCH,
                f"The request is bound to run {request.binding.run_id!r}, but Flower delivered "
                f"it in run {run}: a replay from another run.",
            )
        if isinstance(request, AdvertiseKeysRequest):
            return self._advertise(envelope, content, request)
        session = self._sessions.get((run, request.binding.session))
        if session is None:
            raise SecAggError(
                ErrorCode.BAD_STATE,
                f"This node has no session {request.binding.session} in run {run} (it never "
                "joined it, or its trainer restarted and lost its keys): it must re-key.",
            )
        if isinstance(request, ShareKeysRequest):
            return secagg_reply_to_records(session.node.share_keys(request))
        if isinstance(request, UnmaskRequest):
            return secagg_reply_to_records(session.node.unmask(request))
        return self._masked_input(envelope, content, request, session)

    def _advertise(
        self, envelope: Envelope, content: RecordDict, request: AdvertiseKeysRequest
    ) -> RecordDict:
        instruction = instruction_from_records(content)
        fed = instruction.federation
        if not fed.secure_aggregation.enabled:
            raise RequestRefusedError(
                "secagg_disabled", "The federation does not use secure aggregation."
            )
        key = (envelope.run_id, request.binding.session)
        if key in self._sessions:
            raise SecAggError(
                ErrorCode.BAD_STATE, f"Session {key[1]} of run {key[0]} was already set up."
            )
        num_examples = self.trainer.admit(envelope, instruction)
        expected = vector_length(self.trainer.model_shapes(fed))
        offered = request.session_params.params.vector_length
        if offered != expected:
            raise SecAggError(
                ErrorCode.PARAMS_MISMATCH,
                f"The session expects updates of {offered} elements; this node's model has "
                f"{expected} (parameters + weight).",
            )
        node = SecAggNode(
            node_id=envelope.node_id,
            run_id=str(envelope.run_id),
            session=request.binding.session,
            config=session_config(fed, first_round=instruction.round),
        )
        reply = node.advertise_keys(request)
        if len(self._sessions) >= MAX_SESSIONS:  # forget the oldest session
            self._sessions.pop(next(iter(self._sessions)))
        self._sessions[key] = _Session(node, instruction.round, fed.digest())
        records = secagg_reply_to_records(reply)
        put_num_examples(records, num_examples)
        return records

    def _masked_input(
        self,
        envelope: Envelope,
        content: RecordDict,
        request: MaskedInputRequest,
        session: _Session,
    ) -> RecordDict:
        instruction = instruction_from_records(content)
        answer_key = (envelope.run_id, request.binding.session, instruction.round)
        if answer_key in self._answers:  # redelivered: same answer, no second training
            return self._answers[answer_key]
        self._check_round(instruction, session)
        example_total, scale = round_weighting_from(content)
        reply = self.trainer.train(envelope, instruction, secure=True)
        if reply.status != "ok":
            return train_reply_to_records(reply)
        received = instruction.weights
        vec = encode_update(
            received,
            reply.weights,
            num_examples=reply.num_examples,
            example_total=example_total,
            scale=scale,
        )
        masked = session.node.masked_input(request, vec)
        records = secagg_reply_to_records(masked)
        summary = dataclasses.replace(reply, weights=[])  # the update travels masked only
        for name, record in train_reply_to_records(summary).items():
            records[name] = record
        self._answers = {k: v for k, v in self._answers.items() if k[0] == envelope.run_id}
        self._answers[answer_key] = records
        return records

    @staticmethod
    def _check_round(instruction: RoundInstruction, session: _Session) -> None:
        fed: FederationSpec = instruction.federation
        if fed.digest() != session.federation_digest:
            raise SecAggError(
                ErrorCode.PARAMS_MISMATCH,
                "The federation spec changed within a secure-aggregation session.",
            )
        expected = session.first_round + session.node.round
        if instruction.round != expected:
            raise SecAggError(
                ErrorCode.BINDING_MISMATCH,
                f"Round {instruction.round} was asked, but the session's next round is federation "
                f"round {expected}.",
            )
        if not instruction.weights:
            raise RequestRefusedError(
                "model_missing", "Secure aggregation needs the global model in every round."
            )
