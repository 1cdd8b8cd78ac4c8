"""FedAvg through SecAgg+: the coordinator learns only each round's sum of updates.

`SecAggFedAvg` is a `RoundProtocol`. A session (lepton_fl.secagg) covers up to
``secure_aggregation.session_rounds`` rounds (default: the rest of the run):

* setup, once per session: *advertise keys* (each node checks the federation against its
  site policy and budget, checks the session's parameters, and answers with its signed
  public keys and its size bucket, a power of two >= its training-set size) and *share
  keys* (encrypted Shamir shares of every round's secrets);
* each round: wave A, *train + masked input* (the node trains with DP-SGD, records its charge,
  and sends ``[w_i * (W_i - W) / scale, w_i]`` masked, ``w_i = n_i / n_max`` with ``n_max``
  the largest bucket of the round's active nodes), then wave B, *unmask* (survivors reveal
  the shares that remove the masks; the mask keys of nodes that dropped are reconstructed).
  With ``secure_aggregation.dropout_recovery`` off there is no wave B: the pair masks cancel
  in the sum of the whole active set; a round an active node dropped out of is *voided*
  (no sum; the model stays as it was, the run goes on, and the session without that node).

The new model is ``W + scale * S / W_sum`` from the decoded sum ``[S, W_sum]``: the
example-weighted mean update of exactly the nodes whose input entered the sum. The
coordinator learns the survivors' example total ``W_sum * n_max``, never one node's size. A
node that drops out, is rejected, or refuses is left out of the sum, and is not charged. A
node dropped in a round stays out of the session (its round key was reconstructed) and
rejoins when a new session starts, with fresh keys. A session that cannot go on ends; the
next round starts a new one; a round that cannot be completed safely fails with the reason,
never with a wrong sum.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp import Grid

from coordinator.fl.messaging import NodeFailure, exchange, online_node_ids
from coordinator.fl.rounds import NodeOutcome, RoundOutcome
from lepton_fl.config import FederationSpec, Member
from lepton_fl.secagg import (
    AdvertiseKeysReply,
    AggregateResult,
    MaskedInputReply,
    Reply,
    Request,
    RoundVoidedError,
    SecAggError,
    SecAggServer,
)
from lepton_fl.secagg.fedavg import (
    apply_sum,
    mean_error_bound,
    session_config,
    update_scale,
    vector_length,
)
from lepton_fl.wire import (
    RoundInstruction,
    TrainReply,
    WireError,
    instruction_to_records,
    train_reply_from_records,
)
from lepton_fl.wire.secagg import (
    is_secagg,
    put_round_weighting,
    secagg_reply_from_records,
    secagg_request_to_records,
    size_bucket_from,
)

Answer = RecordDict | str  # a reply's content, or why there is none
Transport = Callable[[Mapping[int, RecordDict], str, str, float], dict[int, Answer]]
"""``(contents by node id, message type, group id, timeout) -> answers by node id``."""


def flower_transport(grid: Grid) -> Transport:
    """Send a wave through the SuperLink and collect what came back in time."""

    def send(
        contents: Mapping[int, RecordDict], message_type: str, group_id: str, timeout: float
    ) -> dict[int, Answer]:
        replies = exchange(
            grid, contents, message_type=message_type, group_id=group_id, timeout=timeout
        )
        answers: dict[int, Answer] = {}
        for node_id, reply in replies.items():
            if isinstance(reply, NodeFailure):
                answers[node_id] = f"The node's executor failed ({reply.code}): {reply.reason}"
            else:
                answers[node_id] = reply
        return answers

    return send


@dataclass
class _Session:
    server: SecAggServer
    number: int
    first_round: int
    buckets: dict[int, int]  # node id -> advertised size bucket
    record: dict[str, Any] = field(default_factory=dict)
    absent: dict[int, NodeOutcome] = field(default_factory=dict)  # why a member is not in it


class SecAggFedAvg:
    """Example-weighted FedAvg whose aggregate is computed by SecAgg+ from masked inputs."""

    name = "secagg+"

    def __init__(
        self,
        federation: FederationSpec,
        *,
        run_id: str,
        transport: Transport,
        graph_seed: Callable[[], bytes] = lambda: secrets.token_bytes(32),
    ) -> None:
        self.federation = federation
        self.run_id = run_id
        self.transport = transport
        self.graph_seed = graph_seed
        self._session: _Session | None = None
        self._sessions = 0

    # -- the RoundProtocol seam -------------------------------------------------------------

    def run_round(
        self,
        grid: Grid | None,
        members: Sequence[Member],
        instruction: RoundInstruction,
        *,
        timeout: float,
    ) -> RoundOutcome:
        """One round: a session setup first if needed, then train + masked input, unmask.

        A node whose masked input reached the coordinator has charged its ledger for the
        round (it does so before the input leaves it): its outcome keeps its reply, and so
        its charge, even when the round then fails or leaves it out of the sum, so that the
        coordinator's ledger is never below the node's own."""
        started = time.monotonic()
        outcomes: dict[int, NodeOutcome] = {}
        if grid is not None:
            outcomes.update(_offline(grid, members))
        details: dict[str, Any] = {}
        by_id = {m.node_id: m for m in members}
        charged: dict[int, TrainReply] = {}  # nodes whose masked input (and charge) came
        in_round: set[int] = set()  # nodes asked for a masked input this round
        try:
            reachable = [m for m in members if m.node_id not in outcomes]
            session = self._ready_session(reachable, instruction, outcomes, timeout)
            details["session"] = session.number
            details["session_round"] = instruction.round - session.first_round + 1
            if session.record:
                details["setup"] = session.record
            result = self._aggregate(
                session, by_id, instruction, outcomes, timeout, charged, in_round
            )
        except SecAggError as err:
            voided = err if isinstance(err, RoundVoidedError) else None
            server = self._session.server if self._session is not None else None
            if voided is None or server is None or server.failed or server.done:
                self._session = None  # the session is over; the next round re-keys
            details["failure"] = {"code": err.code.value, "reason": err.message}
            if voided is not None:  # the session goes on without them
                details["dropouts"] = [_name(by_id, n) for n in voided.dropped]
                _mark_dropped(outcomes, by_id, voided.dropped)
            for m in members:
                outcomes.setdefault(m.node_id, _failed(m, err, in_round=m.node_id in in_round))
            failed = [_keep_charge(outcomes[m.node_id], charged) for m in members]
            return RoundOutcome(
                instruction.round,
                None,
                failed,
                time.monotonic() - started,
                details,
                voided=voided is not None,
            )
        replies = charged
        scale = self._scale(session, result.active)
        size_bound = self._size_bound(session, result.active)
        weights, weight_sum = apply_sum(instruction.weights, result.values, scale=scale)
        for node_id in result.survivors:
            outcomes[node_id] = NodeOutcome(by_id[node_id], "ok", reply=replies[node_id])
        _mark_dropped(outcomes, by_id, result.dropped)
        details.update(
            participants=[by_id[n].name for n in result.survivors],
            dropouts=[by_id[n].name for n in result.dropped],
            threshold=result.params.threshold,
            neighbours=result.params.neighbours,
            clipped_values=result.clipped_total,
            quantization_error_bound=mean_error_bound(result.error_bound, weight_sum) * scale,
            update_scale=scale,
            size_bound=size_bound,
            weight_sum=weight_sum,
            examples=round(weight_sum * size_bound),
            rejections=[
                {
                    "node": _name(by_id, r.sender),
                    "stage": r.stage,
                    "code": r.code.value,
                    "reason": r.message,
                }
                for r in result.rejections
            ],
        )
        if session.server.done:
            self._session = None
        ordered = [
            _keep_charge(
                outcomes.get(m.node_id)
                or NodeOutcome(m, "dropped", "not_in_session", "The node was not in the session."),
                charged,
            )
            for m in members
        ]
        return RoundOutcome(
            instruction.round, weights, ordered, time.monotonic() - started, details
        )

    # -- sessions ---------------------------------------------------------------------------

    def _ready_session(
        self,
        members: Sequence[Member],
        instruction: RoundInstruction,
        outcomes: dict[int, NodeOutcome],
        timeout: float,
    ) -> _Session:
        session = self._session
        if session is not None:
            alive = [n for n in session.server.active if n not in session.server.excluded]
            if len(alive) >= session.server.params.min_survivors:
                session.record = {}
                outcomes.update(session.absent)
                return session
        self._session = None
        return self._setup(members, instruction, outcomes, timeout)

    def _setup(
        self,
        members: Sequence[Member],
        instruction: RoundInstruction,
        outcomes: dict[int, NodeOutcome],
        timeout: float,
    ) -> _Session:
        fed = self.federation
        if not instruction.weights:
            raise ValueError("Secure aggregation needs the global model in every round.")
        self._sessions += 1
        number = self._sessions
        server = SecAggServer(
            run_id=self.run_id,
            session=number,
            config=session_config(fed, first_round=instruction.round),
            participants=[m.node_id for m in members],
            vector_length=vector_length([np.shape(w) for w in instruction.weights]),
            graph_seed=self.graph_seed(),
        )
        by_id = {m.node_id: m for m in members}
        header = instruction_to_records(replace(instruction, weights=[]))  # keeps authorization
        buckets: dict[int, int] = {}

        def advertise(node_id: int, content: RecordDict, reply: Reply) -> None:
            if isinstance(reply, AdvertiseKeysReply):
                buckets[node_id] = size_bucket_from(content)

        wave = _Waves(self.transport, server, by_id, outcomes, timeout)
        rnd = instruction.round
        wave.send(server.advertise_keys_requests(), "query", f"{rnd}.setup-1", header, advertise)
        wave.send(server.share_keys_requests(), "query", f"{rnd}.setup-2")
        params = server.params
        session = _Session(
            server,
            number,
            instruction.round,
            buckets,
            record={
                "participants": [by_id[n].name for n in params.participants],
                "rounds": server.rounds,
                "threshold": params.threshold,
                "neighbours": params.neighbours,
                "modulus_bits": params.modulus_bits,
                "vector_length": params.vector_length,
                "dropout_recovery": not server.one_wave,
            },
        )
        session.absent = dict(outcomes)
        self._session = session
        return session

    # -- one round --------------------------------------------------------------------------

    def _aggregate(
        self,
        session: _Session,
        by_id: Mapping[int, Member],
        instruction: RoundInstruction,
        outcomes: dict[int, NodeOutcome],
        timeout: float,
        summaries: dict[int, TrainReply],
        in_round: set[int],
    ) -> AggregateResult:
        """Wave A (train + masked input) and wave B (unmask); ``summaries`` gets the reply of
        every node whose masked input came (as it comes), ``in_round`` the nodes asked."""
        server = session.server
        requests = server.masked_input_requests()
        active = tuple(requests)
        in_round.update(active)
        base = instruction_to_records(instruction)
        scale = self._scale(session, active)
        put_round_weighting(base, size_bound=self._size_bound(session, active), update_scale=scale)

        def trained(node_id: int, content: RecordDict, reply: Reply) -> None:
            if isinstance(reply, MaskedInputReply):
                summaries[node_id] = train_reply_from_records(content)

        wave = _Waves(self.transport, server, by_id, outcomes, timeout)
        wave.send(requests, "train", str(instruction.round), base, trained)
        if not server.one_wave:
            wave.send(server.unmask_requests(), "query", f"{instruction.round}.unmask")
        return server.finalize()

    @staticmethod
    def _size_bound(session: _Session, active: Sequence[int]) -> int:
        """n_max: the largest size bucket of the round's active nodes (public)."""
        return max(session.buckets[n] for n in active)

    def _scale(self, session: _Session, active: Sequence[int]) -> float:
        return update_scale(self.federation, max_examples=self._size_bound(session, active))


@dataclass
class _Waves:
    """Sends a session's waves and feeds the replies to its server."""

    transport: Transport
    server: SecAggServer
    by_id: Mapping[int, Member]
    outcomes: dict[int, NodeOutcome]
    timeout: float

    def send(
        self,
        requests: Mapping[int, Request],
        message_type: str,
        group_id: str,
        header: RecordDict | None = None,
        on_reply: Callable[[int, RecordDict, Reply], None] | None = None,
    ) -> None:
        """Send one wave; feed valid replies to the server, record why others are missing."""
        contents: dict[int, RecordDict] = {}
        for node_id, request in requests.items():
            content = secagg_request_to_records(request)
            for name, record in (header or RecordDict()).items():
                content[name] = record
            contents[node_id] = content
        answers = self.transport(contents, message_type, group_id, self.timeout)
        for node_id in requests:
            member = self.by_id[node_id]
            answer = answers.get(node_id)
            if answer is None:
                if node_id in self.outcomes and self.outcomes[node_id].code == "node_offline":
                    continue  # known not to be running: that says more than "no reply"
                self.outcomes[node_id] = NodeOutcome(
                    member, "dropped", "no_reply", f"No answer to {group_id} in time."
                )
                continue
            if isinstance(answer, str):
                self.outcomes[node_id] = NodeOutcome(member, "error", "clientapp_error", answer)
                continue
            if not is_secagg(answer):
                self.outcomes[node_id] = _refusal(member, answer)
                continue
            try:
                reply = secagg_reply_from_records(answer)
                if on_reply is not None:
                    on_reply(node_id, answer, reply)
            except WireError as err:
                self.outcomes[node_id] = NodeOutcome(member, "error", err.code, str(err))
                continue
            if reply.sender != node_id:
                self.outcomes[node_id] = NodeOutcome(
                    member,
                    "error",
                    "secagg_unknown_sender",
                    f"The reply claims to come from node {reply.sender}.",
                )
                continue
            rejection = self.server.receive(reply)
            if rejection is not None:
                self.outcomes[node_id] = NodeOutcome(
                    member, "error", f"secagg_{rejection.code.value}", rejection.message
                )


def _mark_dropped(
    outcomes: dict[int, NodeOutcome], by_id: Mapping[int, Member], dropped: Sequence[int]
) -> None:
    """Record the round's active nodes whose masked input did not come as dropped, unless
    what they answered says more."""
    for node_id in dropped:
        earlier = outcomes.get(node_id)
        if earlier is not None and (
            earlier.status == "refused"
            or earlier.code.startswith("secagg_")
            or earlier.code == "node_offline"
        ):
            continue  # the reason it gave, or why its message was rejected, says more
        why = f" ({earlier.reason})" if earlier is not None and earlier.reason else ""
        outcomes[node_id] = NodeOutcome(
            by_id[node_id],
            "dropped",
            "secagg_dropped",
            f"The node sent no masked input this round{why}; its update is not in the sum "
            "and the coordinator does not charge it.",
        )


def _offline(grid: Grid, members: Sequence[Member]) -> dict[int, NodeOutcome]:
    """Members the SuperLink does not see connected: they are absent, whatever else fails."""
    online = online_node_ids(grid)
    return {
        m.node_id: NodeOutcome(
            m,
            "dropped",
            "node_offline",
            "The node is not connected to the coordinator (its SuperNode is not running or "
            "cannot reach the SuperLink); it was sent nothing this round.",
        )
        for m in members
        if m.node_id not in online
    }


def _failed(member: Member, err: SecAggError, *, in_round: bool) -> NodeOutcome:
    """A member's outcome in a round the session could not complete."""
    if in_round:
        return NodeOutcome(member, "error", f"secagg_{err.code.value}", err.message)
    return NodeOutcome(
        member,
        "dropped",
        "not_in_session",
        "The node was not in this round's secure-aggregation session (it dropped out of it "
        f"earlier); the round failed without it: {err.message}",
    )


def _keep_charge(outcome: NodeOutcome, charged: Mapping[int, TrainReply]) -> NodeOutcome:
    """``outcome`` with the node's reply (and so its charge) if its masked input came."""
    reply = charged.get(outcome.member.node_id)
    if reply is None or outcome.reply is not None:
        return outcome
    return replace(
        outcome,
        reply=reply,
        reason=f"{outcome.reason} Its masked input left the node, which charged its ledger: "
        "the coordinator records the charge as not aggregated.".lstrip(),
    )


def _refusal(member: Member, content: RecordDict) -> NodeOutcome:
    try:
        reply = train_reply_from_records(content)
    except WireError as err:
        return NodeOutcome(member, "error", err.code, str(err))
    if reply.status == "refused":
        return NodeOutcome(member, "refused", reply.code, reply.reason, reply)
    return NodeOutcome(member, "error", reply.code, reply.reason, reply)


def _name(by_id: Mapping[int, Member], node_id: int) -> str:
    member = by_id.get(node_id)
    return member.name if member is not None else str(node_id)
