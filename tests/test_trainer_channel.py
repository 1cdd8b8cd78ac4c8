"""The relay-trainer channel carries messages far beyond gRPC's 4 MiB default both ways
(a MiniLM top layer's update alone is 7.7 MB)."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc

from client_node.trainer_channel import CHANNEL_OPTIONS, HANDLE, SERVICE, call


def _echo_server(socket_path: Path) -> grpc.Server:
    def identity(data: bytes) -> bytes:
        return data

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request[::-1]

    handlers = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            HANDLE.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=identity, response_serializer=identity
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((handlers,))
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    return server


def test_a_reply_of_several_mebibytes_reaches_the_relay(tmp_path: Path) -> None:
    socket_path = tmp_path / "trainer.sock"
    server = _echo_server(socket_path)
    try:
        payload = bytes(range(256)) * (12 * 1024 * 1024 // 256)  # 12 MiB, 3x the default

        reply = call(socket_path, HANDLE, payload, timeout=60)

        assert reply == payload[::-1]
    finally:
        server.stop(0).wait()
