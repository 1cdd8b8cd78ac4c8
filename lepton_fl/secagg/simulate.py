"""Run a whole round in one process: for tests, benchmarks and demos (no networking)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lepton_fl.secagg.config import SecAggConfig
from lepton_fl.secagg.errors import SecAggError
from lepton_fl.secagg.messages import Reply, Stage
from lepton_fl.secagg.node import SecAggNode
from lepton_fl.secagg.server import AggregateResult, SecAggServer


@dataclass(slots=True)
class LocalRound:
    """The server, the nodes and every reply a node sent, kept for inspection."""

    server: SecAggServer
    nodes: dict[int, SecAggNode]
    replies: list[Reply] = field(default_factory=list)
    node_errors: dict[int, SecAggError] = field(default_factory=dict)


def run_local_round(
    config: SecAggConfig,
    updates: Mapping[int, NDArray[Any]],
    *,
    run_id: str = "run",
    round: int = 1,
    drop_at: Mapping[int, Stage] | None = None,
    graph_seed: bytes | None = None,
) -> tuple[AggregateResult, LocalRound]:
    """Run one round over ``updates``; node ``i`` stops answering at stage ``drop_at[i]``.

    A node that refuses a request (raises :class:`SecAggError`) drops out, as it would in
    a deployment.  Server-side refusals propagate.
    """
    drops = dict(drop_at or {})
    ids = sorted(updates)
    length = int(np.asarray(updates[ids[0]]).size)
    server = SecAggServer(
        run_id=run_id,
        round=round,
        config=config,
        participants=ids,
        vector_length=length,
        graph_seed=graph_seed,
    )
    nodes = {i: SecAggNode(node_id=i, run_id=run_id, round=round, config=config) for i in ids}
    state = LocalRound(server, nodes)

    def answer(stage: Stage, requests: Mapping[int, Any]) -> None:
        for node_id, request in requests.items():
            if node_id in state.node_errors or drops.get(node_id) == stage:
                continue
            node = nodes[node_id]
            try:
                if stage is Stage.ADVERTISE_KEYS:
                    reply: Reply = node.advertise_keys(request)
                elif stage is Stage.SHARE_KEYS:
                    reply = node.share_keys(request)
                elif stage is Stage.MASKED_INPUT:
                    reply = node.masked_input(request, np.asarray(updates[node_id]).ravel())
                else:
                    reply = node.unmask(request)
            except SecAggError as exc:
                state.node_errors[node_id] = exc
                continue
            state.replies.append(reply)
            server.receive(reply)

    answer(Stage.ADVERTISE_KEYS, server.advertise_keys_requests())
    answer(Stage.SHARE_KEYS, server.share_keys_requests())
    answer(Stage.MASKED_INPUT, server.masked_input_requests())
    answer(Stage.UNMASK, server.unmask_requests())
    return server.finalize(), state
