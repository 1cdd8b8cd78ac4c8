"""The trainer's local socket: a versioned gRPC service over a Unix socket.

The trainer serves `Ping` here: the readiness signal for operators and for
`lepton.cluster.LocalCluster.wait_for_nodes` (the trainer has loaded its data and ledger).
Messages no longer travel over this socket: the trainer's executor (`client_node.executor`)
claims them from the SuperNode itself. `Handle` is the retired method name of the old relay
path; no trainer serves it (a caller gets UNIMPLEMENTED), and `call` stays a generic unary
call with large-message limits. Only processes that can open the socket file (mode 0600, in
the node's state directory) can reach the trainer.
"""

from __future__ import annotations

from pathlib import Path

import grpc

SERVICE = "lepton.trainer.v1.Trainer"
HANDLE = f"/{SERVICE}/Handle"
PING = f"/{SERVICE}/Ping"

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
"""Largest request or reply on the channel, both ways (gRPC's default is 4 MiB: a MiniLM top
layer alone is 7.7 MB of float32 weights)."""

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def target(socket_path: Path) -> str:
    """gRPC target string for a Unix domain socket."""
    return f"unix://{socket_path.resolve()}"


def _identity(data: bytes) -> bytes:
    return data


def call(socket_path: Path, method: str, payload: bytes, *, timeout: float) -> bytes:
    """One unary call to the trainer; raises grpc.RpcError on failure or deadline."""
    with grpc.insecure_channel(target(socket_path), options=CHANNEL_OPTIONS) as channel:
        stub = channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        return bytes(stub(payload, timeout=timeout, wait_for_ready=False))


def ping(socket_path: Path, *, timeout: float = 2.0) -> bool:
    """True if a trainer answers on the socket."""
    if not socket_path.exists():
        return False
    try:
        return call(socket_path, PING, b"", timeout=timeout) == b"ready"
    except grpc.RpcError:
        return False
