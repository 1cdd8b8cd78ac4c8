"""The node's half of secure aggregation, inside the long-lived trainer.

One :class:`SecAggNode` per (run, session) holds the node's session keys; they never leave
this process. The four message kinds of a session:

* advertise keys (setup): the federation is checked against the site policy and budget
  (a node that would refuse never joins); the session's public parameters are checked
  against the node's own derivation from the federation spec; the node advertises its
  signed keys and its size bucket (a power of two >= its training-set size), never its
  exact size;
* share keys (setup): Shamir shares of every round's secrets, encrypted per holder;
* masked input (wave A of a round): train with DP-SGD (the charge is recorded in the ledger
  before anything leaves), then send ``[w * (W_i - W) / scale, w]`` masked, with
  ``w = n_i / n_max`` (``n_max``: the round's public size bound): the example count travels
  only inside the masked vector. What travels beside it in the clear is the round's charge,
  which depends on the size bucket only (the node samples at ``q = batch_size / bucket``,
  ``client_node.trainer.core.sampling_population``), and no timings;
* unmask (wave B): reveal the round's shares the protocol allows.

A refused or malformed request is answered with a reason; the session's state machine
(lepton_fl.secagg) refuses anything out of order, replayed, or bound to another run, round
or stage. A redelivered masked-input request gets the same bytes back, never a second
training. A node answers each round of a run in one session only: a second session asking
for a round whose masked input this node already sent is refused
(``secagg_round_already_answered``), so that a coordinator cannot subtract two sums over
different sets of nodes.

Each node signs its advertised keys with its enrolled authentication key (node.toml
``[auth] private_key``) and checks the other participants against the members of the run's
signed authorization and their enrolled public keys (lepton_fl.secagg.identity): a forged or
substituted key advertisement, or a participant who is not a member, is refused.
"""

from __future__ import annotations

import dataclasses
import threading

from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import RecordDict

from client_node.trainer.core import NodeTrainer, RequestRefusedError
from lepton_fl.config import FederationSpec
from lepton_fl.crypto.run_authorization import RunAuthorization
from lepton_fl.secagg import (
    AdvertiseKeysRequest,
    ErrorCode,
    MaskedInputRequest,
    NodeIdentity,
    Request,
    SecAggError,
    SecAggNode,
    ShareKeysRequest,
    UnmaskRequest,
)
from lepton_fl.secagg.fedavg import encode_update, session_config, size_bucket, vector_length
from lepton_fl.secagg.identity import load_member_key, load_signing_key
from lepton_fl.wire import (
    Envelope,
    RoundInstruction,
    TrainReply,
    WireError,
    instruction_from_records,
    train_reply_to_records,
)
from lepton_fl.wire.secagg import (
    put_size_bucket,
    round_weighting_from,
    secagg_reply_to_records,
    secagg_request_from_records,
)

MAX_SESSIONS = 64
# (run, round) pairs remembered as answered, over all runs: more than the rounds of four
# runs of the longest kind (``FederationSpec.rounds`` <= 1000), each a training and a charge.
MAX_ANSWERED_ROUNDS = 4096


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
        self._answered_in: dict[tuple[int, int], int] = {}  # (run, round) -> session
        self._signing_key: ec.EllipticCurvePrivateKey | None = None

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
        # before any key leaves this node
        authorization = self.trainer.authorize(envelope, instruction)
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
            identity=self._identity(authorization, envelope.node_id),
        )
        reply = node.advertise_keys(request)
        if len(self._sessions) >= MAX_SESSIONS:  # forget the oldest session
            self._sessions.pop(next(iter(self._sessions)))
        self._sessions[key] = _Session(node, instruction.round, fed.digest())
        records = secagg_reply_to_records(reply)
        put_size_bucket(records, size_bucket(num_examples))
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
        answered_in = self._answered_in.get((envelope.run_id, instruction.round))
        if answered_in is not None:
            raise SecAggError(
                ErrorCode.ROUND_ALREADY_ANSWERED,
                f"This node already sent its masked input for round {instruction.round} of run "
                f"{envelope.run_id} in session {answered_in}; it answers a round in one "
                "session only, so that no two sums over different nodes can be subtracted.",
            )
        self._check_round(instruction, session)
        size_bound, scale = round_weighting_from(content)
        reply = self.trainer.train(envelope, instruction, secure=True)
        if reply.status != "ok":
            return train_reply_to_records(reply)
        received = instruction.weights
        vec = encode_update(
            received,
            reply.weights,
            num_examples=reply.num_examples,
            size_bound=size_bound,
            scale=scale,
        )
        masked = session.node.masked_input(request, vec)
        records = secagg_reply_to_records(masked)
        # The update and the example count travel masked only. The charge (sigma, q, steps)
        # is a function of the size bucket (`core.sampling_population`); the timings, which
        # grow with the exact size, stay in the node's log.
        summary = dataclasses.replace(
            reply, weights=[], num_examples=0, train_seconds=0.0, node_seconds=0.0
        )
        for name, record in train_reply_to_records(summary).items():
            records[name] = record
        self._answers = {k: v for k, v in self._answers.items() if k[0] == envelope.run_id}
        self._answers[answer_key] = records
        if len(self._answered_in) >= MAX_ANSWERED_ROUNDS:  # forget the oldest round
            self._answered_in.pop(next(iter(self._answered_in)))
        self._answered_in[(envelope.run_id, instruction.round)] = request.binding.session
        return records

    def _identity(self, authorization: RunAuthorization, node_id: int) -> NodeIdentity:
        """This node's signing key and the run's members' enrolled keys, from the signed
        run authorization (never from the coordinator's unsigned messages)."""
        unkeyed = [m.name for m in authorization.members if m.public_key is None]
        if unkeyed:
            raise SecAggError(
                ErrorCode.NO_IDENTITY,
                f"The run's authorization names no enrolled public key for {unkeyed}: this "
                "node cannot check their key advertisements and refuses the session.",
            )
        try:
            members = {
                m.node_id: load_member_key(m.public_key)
                for m in authorization.members
                if m.public_key is not None
            }
        except ValueError as err:
            raise SecAggError(
                ErrorCode.NO_IDENTITY, f"A member's enrolled public key is unusable: {err}."
            ) from err
        signing_key = self._load_signing_key()
        own = members.get(node_id)
        if own is None or own.public_numbers() != signing_key.public_key().public_numbers():
            raise SecAggError(
                ErrorCode.NO_IDENTITY,
                "The run's authorization lists another public key for this node than the "
                "one in node.toml [auth] private_key: this node cannot sign its keys so "
                "that the others accept them.",
            )
        return NodeIdentity(signing_key=signing_key, members=members)

    def _load_signing_key(self) -> ec.EllipticCurvePrivateKey:
        if self._signing_key is None:
            path = self.trainer.settings.auth.private_key
            try:
                self._signing_key = load_signing_key(path.read_bytes())
            except (OSError, ValueError) as err:
                raise SecAggError(
                    ErrorCode.NO_IDENTITY,
                    f"This node cannot sign its secure-aggregation keys with its enrolled "
                    f"key {path} ([auth] private_key): {err}.",
                ) from err
        return self._signing_key

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
