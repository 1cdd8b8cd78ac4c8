"""Sending messages to a set of nodes and collecting their replies.

Flower's `Grid.send_and_receive` sleeps 3 s between pulls; a round here is a handful of
seconds, so we push once and pull again at most every ``PULL_INTERVAL_S`` instead (our
SuperLink holds an empty pull open until a reply comes, `coordinator.superlink_launcher`, so
the next pull starts at once after such a pull). Contents travel packed
(`lepton_fl.wire.packing`: each record of a request as one ConfigRecord, so a record that
several messages share, the model, is one object at the SuperLink; a reply whole). Callers
send and receive plain RecordDicts, and a reply that is an error or cannot be unpacked comes
back as a `NodeFailure`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from lepton_fl.wire import WireError, pack, unpack
from lepton_fl.wire.packing import PackCache

PULL_INTERVAL_S = 0.1
LIVENESS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class NodeFailure:
    """A reply that carries no Lepton content: Flower's error (``clientapp_error``: the node's
    executor failed or refused the task) or a content that does not unpack (the `WireError`'s
    code, e.g. ``wire_version_mismatch``)."""

    code: str
    reason: str


Reply = RecordDict | NodeFailure
"""A node's answer: its unpacked content, or why there is none."""


def exchange(
    grid: Grid,
    contents: Mapping[int, RecordDict],
    *,
    message_type: str,
    group_id: str,
    timeout: float,
) -> dict[int, Reply]:
    """Send one message per node id and wait up to `timeout` for the replies.

    Returns the replies that arrived, keyed by node id; a node missing from the result
    did not answer in time, or left the federation (the SuperLink no longer lists it as
    online) while we waited: nobody waits out the timeout for a node that is gone.
    """
    node_ids = list(contents)
    shared: PackCache = {}  # a record several messages carry is packed once
    messages = [
        Message(
            pack(contents[node_id], cache=shared),
            dst_node_id=node_id,
            message_type=message_type,
            group_id=group_id,
        )
        for node_id in node_ids
    ]
    message_ids = list(grid.push_messages(messages))
    pending = {mid: node_id for mid, node_id in zip(message_ids, node_ids, strict=True) if mid}
    replies: dict[int, Reply] = {}
    deadline = time.monotonic() + timeout
    next_liveness = time.monotonic() + LIVENESS_INTERVAL_S
    while pending and time.monotonic() < deadline:
        pulled_at = time.monotonic()
        for reply in grid.pull_messages(list(pending)):
            node_id = pending.pop(reply.metadata.reply_to_message_id, None)
            if node_id is None:
                continue
            answer = read_reply(reply)
            if answer is not None:  # None: its content never arrived whole, as if no reply
                replies[node_id] = answer
        if pending and time.monotonic() >= next_liveness:
            online = online_node_ids(grid)
            pending = {mid: n for mid, n in pending.items() if n in online}
            next_liveness = time.monotonic() + LIVENESS_INTERVAL_S
        if pending:
            time.sleep(max(0.0, PULL_INTERVAL_S - (time.monotonic() - pulled_at)))
    return replies


def read_reply(reply: Message) -> Reply | None:
    """A pulled reply as its unpacked content, or the `NodeFailure` it amounts to; ``None``
    when its content never arrived whole (the node died while uploading it: Flower answers
    MESSAGE_UNAVAILABLE), which counts as no reply at all."""
    if reply.has_error():
        if reply.error.code == ErrorCode.MESSAGE_UNAVAILABLE:
            return None
        return NodeFailure("clientapp_error", reply.error.reason or "")
    try:
        return unpack(reply.content)
    except WireError as err:
        return NodeFailure(err.code, str(err))


def online_node_ids(grid: Grid) -> set[int]:
    """Node ids the SuperLink currently reports for this run's federation."""
    return {int(node_id) for node_id in grid.get_node_ids()}
