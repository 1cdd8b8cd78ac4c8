"""The ClientApp that Flower spawns for every message: a thin relay to the trainer daemon.

It imports flwr, grpc and the wire module only (no torch, no Opacus), forwards the message
content with its envelope over the trainer's local socket, and returns the trainer's answer.
If the trainer cannot be reached it replies with an `error` status the ServerApp records.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_node.trainer_channel import HANDLE, call
from lepton_fl.wire import (
    Envelope,
    MessageKind,
    TrainReply,
    envelope_request,
    records_from_bytes,
    train_reply_to_records,
)

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Forward a train message."""
    return forward("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Forward an evaluate message."""
    return forward("evaluate", msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Forward a secure-aggregation setup or unmask message."""
    return forward("secagg", msg, context)


def forward(kind: MessageKind, msg: Message, context: Context) -> Message:
    """Send the message to the trainer and wrap its answer as the reply."""
    socket_path = Path(str(context.node_config["trainer-socket"]))
    timeout = float(context.node_config.get("trainer-timeout", 600.0))
    envelope = Envelope(
        kind=kind,
        run_id=msg.metadata.run_id,
        message_id=msg.metadata.message_id,
        node_id=context.node_id,
    )
    try:
        answer = call(socket_path, HANDLE, envelope_request(envelope, msg.content), timeout=timeout)
        content = records_from_bytes(answer)
    except grpc.RpcError as err:
        content = train_reply_to_records(
            TrainReply(
                status="error",
                code="trainer_unavailable",
                reason=f"The node's trainer did not answer ({err.code().name}): {err.details()}",
            )
        )
    return Message(content, reply_to=msg)
