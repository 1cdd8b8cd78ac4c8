"""Serves a `NodeTrainer` over the relay-trainer contract on a Unix socket."""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent import futures
from pathlib import Path

import grpc
from flwr.app import ConfigRecord, RecordDict

from client_node.trainer.core import NodeTrainer
from client_node.trainer.secure import SecureAggregation
from client_node.trainer_channel import CHANNEL_OPTIONS, HANDLE, PING, SERVICE
from lepton_fl.wire import (
    EvaluateReply,
    TrainReply,
    WireError,
    envelope_from_request,
    evaluate_reply_to_records,
    instruction_from_records,
    records_to_bytes,
    train_reply_to_records,
)
from lepton_fl.wire.secagg import is_secagg

log = logging.getLogger("lepton.trainer")


def handle_request(trainer: NodeTrainer, secure: SecureAggregation, data: bytes) -> bytes:
    """Decode a relayed message, run it, encode the answer. Bad input is answered, not raised."""
    try:
        envelope, content = envelope_from_request(data)
        if envelope.kind == "secagg" or (envelope.kind == "train" and is_secagg(content)):
            answer = secure.handle(envelope, content)
            log.info("run %s: secagg %s", envelope.run_id, _status_of(answer))
            return records_to_bytes(answer)
        instruction = instruction_from_records(content)
    except WireError as err:
        log.warning("refused a malformed message: %s", err)
        return records_to_bytes(
            train_reply_to_records(TrainReply(status="error", code=err.code, reason=str(err)))
        )
    if envelope.kind == "train":
        reply = trainer.train(envelope, instruction)
        log.info(
            "run %s round %s: %s %s", envelope.run_id, instruction.round, reply.status, reply.reason
        )
        return records_to_bytes(train_reply_to_records(reply))
    evaluation: EvaluateReply = trainer.evaluate(envelope, instruction)
    return records_to_bytes(evaluate_reply_to_records(evaluation))


def _status_of(records: RecordDict) -> str:
    status = records.get("status")
    if isinstance(status, ConfigRecord):
        return f"{status.get('status')!s:.10} {status.get('reason')!s:.200}"
    return "ok"


class TrainerServer:
    """A gRPC server on a Unix socket that only this node's user can open."""

    def __init__(self, trainer: NodeTrainer, socket_path: Path) -> None:
        self.trainer = trainer
        self.secure = SecureAggregation(trainer)
        self.socket_path = socket_path
        self._server: grpc.Server | None = None

    def start(self) -> None:
        """Bind the socket (mode 0600 in a 0700 directory) and serve."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a crashed run

        def on_handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return handle_request(self.trainer, self.secure, request)
            except Exception as err:  # never let the relay see a bare traceback
                log.exception("trainer failed")
                context.abort(grpc.StatusCode.INTERNAL, f"The trainer failed: {err}")
                raise

        def on_ping(request: bytes, context: grpc.ServicerContext) -> bytes:
            return b"ready"

        def identity(data: bytes) -> bytes:
            return data

        handlers = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                HANDLE.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(
                    on_handle, request_deserializer=identity, response_serializer=identity
                ),
                PING.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(
                    on_ping, request_deserializer=identity, response_serializer=identity
                ),
            },
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=CHANNEL_OPTIONS,
        )
        server.add_generic_rpc_handlers((handlers,))
        old_umask = os.umask(0o177)
        try:
            server.add_insecure_port(f"unix://{self.socket_path.resolve()}")
            server.start()
        finally:
            os.umask(old_umask)
        self._server = server

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving and remove the socket."""
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
