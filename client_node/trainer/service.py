"""The trainer's message handler, and its readiness socket.

`handle_message` is the one entry point for a Flower message's content: the node's executor
(`client_node.executor`) calls it in this process for every task it claims from the
SuperNode. `handle_request` is the same over serialised bytes (envelope included), kept for
tests that drive the trainer the way a relay would.

`TrainerServer` serves only `Ping` on a Unix socket (mode 0600 in a 0700 directory): it tells
operators and `LocalCluster.wait_for_nodes` that the trainer has loaded its data and ledger.
No message reaches the trainer through the socket any more.
"""

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
from client_node.trainer_channel import CHANNEL_OPTIONS, PING, SERVICE
from lepton_fl.wire import (
    Envelope,
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


def handle_message(
    trainer: NodeTrainer, secure: SecureAggregation, envelope: Envelope, content: RecordDict
) -> RecordDict:
    """Run one message's content; bad input is answered with an error status, not raised."""
    try:
        if envelope.kind == "secagg" or (envelope.kind == "train" and is_secagg(content)):
            answer = secure.handle(envelope, content)
            log.info("run %s: secagg %s", envelope.run_id, _status_of(answer))
            return answer
        instruction = instruction_from_records(content)
    except WireError as err:
        log.warning("refused a malformed message: %s", err)
        return _error_records(err)
    if envelope.kind == "train":
        reply = trainer.train(envelope, instruction)
        log.info(
            "run %s round %s: %s %s", envelope.run_id, instruction.round, reply.status, reply.reason
        )
        return train_reply_to_records(reply)
    evaluation: EvaluateReply = trainer.evaluate(envelope, instruction)
    return evaluate_reply_to_records(evaluation)


def handle_request(trainer: NodeTrainer, secure: SecureAggregation, data: bytes) -> bytes:
    """`handle_message` over relay bytes: decode the envelope and content, encode the answer."""
    try:
        envelope, content = envelope_from_request(data)
    except WireError as err:
        log.warning("refused a malformed message: %s", err)
        return records_to_bytes(_error_records(err))
    return records_to_bytes(handle_message(trainer, secure, envelope, content))


def _error_records(err: WireError) -> RecordDict:
    return train_reply_to_records(TrainReply(status="error", code=err.code, reason=str(err)))


def _status_of(records: RecordDict) -> str:
    status = records.get("status")
    if isinstance(status, ConfigRecord):
        return f"{status.get('status')!s:.10} {status.get('reason')!s:.200}"
    return "ok"


class TrainerServer:
    """The trainer's readiness socket: a gRPC `Ping` on a Unix socket only this user opens."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._server: grpc.Server | None = None

    def start(self) -> None:
        """Bind the socket (mode 0600 in a 0700 directory) and serve."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a crashed run

        def on_ping(request: bytes, context: grpc.ServicerContext) -> bytes:
            return b"ready"

        def identity(data: bytes) -> bytes:
            return data

        handlers = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                PING.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(
                    on_ping, request_deserializer=identity, response_serializer=identity
                ),
            },
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=CHANNEL_OPTIONS)
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
