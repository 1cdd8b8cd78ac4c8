"""Run a whole session in one process: for tests, benchmarks and demos (no networking)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lepton_fl.secagg.config import SecAggConfig
from lepton_fl.secagg.errors import RoundVoidedError, SecAggError
from lepton_fl.secagg.messages import (
    SETUP,
    Reply,
    Request,
    SetupOrRound,
    Stage,
)
from lepton_fl.secagg.node import SecAggNode
from lepton_fl.secagg.server import AggregateResult, SecAggServer

DropPoint = tuple[SetupOrRound, Stage]
"""Where a node goes silent for good: (``"setup"`` or a round, the stage it stops at)."""


@dataclass(slots=True)
class LocalSession:
    """The server, the nodes, every request and reply, and the outcome of each round."""

    server: SecAggServer
    nodes: dict[int, SecAggNode]
    results: list[AggregateResult] = field(default_factory=list)
    error: SecAggError | None = None
    requests: dict[tuple[SetupOrRound, Stage], dict[int, Request]] = field(default_factory=dict)
    replies: list[Reply] = field(default_factory=list)
    node_errors: dict[int, SecAggError] = field(default_factory=dict)
    voided: dict[int, RoundVoidedError] = field(default_factory=dict)  # one-wave rounds


def _silent_from(point: DropPoint | None, when: SetupOrRound, stage: Stage) -> bool:
    """Whether a node that drops at ``point`` is silent at (``when``, ``stage``)."""
    if point is None:
        return False
    order = list(Stage)

    def key(w: SetupOrRound, s: Stage) -> tuple[int, int]:
        return (0 if w == SETUP else int(w), order.index(s))

    return key(when, stage) >= key(*point)


def run_local_session(
    config: SecAggConfig,
    updates: Sequence[Mapping[int, NDArray[Any]]],
    *,
    run_id: str = "run",
    session: int = 1,
    drop_at: Mapping[int, DropPoint] | None = None,
    graph_seed: bytes | None = None,
) -> LocalSession:
    """Set up a session and run ``len(updates)`` rounds (``updates[r - 1]`` for round r).

    Node ``i`` stops answering for good at ``drop_at[i]``.  A node that refuses a request
    (raises :class:`SecAggError`) leaves the session, as it would in a deployment.  A
    server-side error ends the session: it is returned in ``error`` with the rounds done.
    A voided one-wave round is recorded in ``voided`` and the session goes on.
    """
    drops = dict(drop_at or {})
    ids = sorted(updates[0])
    length = int(np.asarray(updates[0][ids[0]]).size)
    server = SecAggServer(
        run_id=run_id,
        session=session,
        config=config,
        participants=ids,
        vector_length=length,
        graph_seed=graph_seed,
    )
    nodes = {i: SecAggNode(node_id=i, run_id=run_id, session=session, config=config) for i in ids}
    state = LocalSession(server, nodes)

    def answer(when: SetupOrRound, stage: Stage, requests: Mapping[int, Any]) -> None:
        state.requests[(when, stage)] = dict(requests)
        for node_id, request in requests.items():
            if node_id in state.node_errors or _silent_from(drops.get(node_id), when, stage):
                continue
            node = nodes[node_id]
            try:
                if stage is Stage.ADVERTISE_KEYS:
                    reply: Reply = node.advertise_keys(request)
                elif stage is Stage.SHARE_KEYS:
                    reply = node.share_keys(request)
                elif stage is Stage.MASKED_INPUT:
                    assert isinstance(when, int)
                    vec = np.asarray(updates[when - 1][node_id]).ravel()
                    reply = node.masked_input(request, vec)
                else:
                    reply = node.unmask(request)
            except SecAggError as exc:
                state.node_errors[node_id] = exc
                continue
            state.replies.append(reply)
            server.receive(reply)

    try:
        answer(SETUP, Stage.ADVERTISE_KEYS, server.advertise_keys_requests())
        answer(SETUP, Stage.SHARE_KEYS, server.share_keys_requests())
        for r in range(1, len(updates) + 1):
            answer(r, Stage.MASKED_INPUT, server.masked_input_requests())
            if not server.one_wave:
                answer(r, Stage.UNMASK, server.unmask_requests())
            try:
                state.results.append(server.finalize())
            except RoundVoidedError as exc:
                state.voided[r] = exc
                if server.failed or server.done:
                    break
    except SecAggError as exc:
        state.error = exc
    return state
