"""The node's ClientApp executor: the trainer process claims the SuperNode's tasks itself.

Flower's default (``flower-supernode --isolation subprocess``) starts ``flower-superexec``,
which spawns one ``flwr-clientapp`` process per message; that process installs the run's FAB
and imports whatever ClientApp module the FAB names. That costs seconds per message and, worse,
runs coordinator-shipped code on the node. Here the SuperNode runs with
``--isolation process`` and this executor, a thread in the long-lived trainer process, speaks
the same Runtime API protocol as flower-superexec + flwr-clientapp on loopback:

1. ``AcquireTask`` (ClientApp tasks only, HMAC-signed with the node's SuperExec secret) gives
   a task and a token;
2. with the token: ``PullTaskInput`` + ``PullMessages`` (Flower's own `pull_task_input`), task
   heartbeats in a thread, the FAB check (`client_node.fab_check`: nothing is ever installed,
   imported or run from the bundle), the content unpacked (`lepton_fl.wire.packing`: one object
   per record, and the wire-version check), the trainer's handler called in this process, the
   reply packed and pushed with Flower's `push_message`, and ``PushTaskOutput`` COMPLETED or
   FAILED.

A failure while handling one task is answered (an error reply and a FAILED output) and the
loop goes on. The loop asks for the next task as soon as the SuperNode signals one
(`client_node.wake`), and otherwise only every `PollSchedule.woken_s`; without the wake-up
socket it polls every `PollSchedule.busy_s` while tasks keep coming and every
`PollSchedule.idle_s` otherwise, so an idle node costs almost nothing. This relies on Flower
internals (Runtime API protobufs, `RuntimeHttpClient`, interceptors), hence
`check_flower_version` at node start.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.common.constant import (
    HEARTBEAT_BASE_MULTIPLIER,
    HEARTBEAT_CALL_TIMEOUT,
    HEARTBEAT_DEFAULT_INTERVAL,
    ErrorCode,
    SubStatus,
)
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    AcquireTaskResponse,
    SendTaskHeartbeatRequest,
)
from flwr.proto.task_pb2 import Task
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry.retry_invoker import RetryInvoker, exponential
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime import run_clientapp
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from client_node.fab_check import FabChecker
from client_node.wake import WakeReceiver
from lepton_fl.flower_pins import shorten_object_pull_backoff
from lepton_fl.wire import Envelope, MessageKind, WireError, pack, unpack

log = logging.getLogger("lepton.executor")

TASK_INPUT_WAIT_S = 60.0
"""How long a claimed task waits for its input's objects on the SuperNode (they come from the
SuperLink; a few MB take seconds). Past that, the task fails and the executor claims the next:
seen when a coordinator was killed between sending a message and its objects."""
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per Runtime call otherwise

"""The Flower minor version whose Runtime API this executor speaks."""

COMPONENT_NAME = "flwr-clientapp"
"""How the executor introduces itself to the SuperNode's version check."""

ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"
"""The Runtime method flower-supernode protects with the SuperExec HMAC secret."""

_BEAT_BUDGET_S = HEARTBEAT_DEFAULT_INTERVAL - HEARTBEAT_CALL_TIMEOUT
HEARTBEAT_INTERVAL_S = HEARTBEAT_BASE_MULTIPLIER * _BEAT_BUDGET_S
"""Flower's own task heartbeat period (20 s in 1.42): a claim lives 30 s, a heartbeat
extends it to 60 s."""

MESSAGE_KINDS: dict[str, MessageKind] = {
    "train": "train",
    "evaluate": "evaluate",
    "query": "secagg",
}
"""Flower message type -> what the trainer is asked to do (SecAgg+ setup/unmask are queries)."""

MessageHandler = Callable[[Envelope, RecordDict], RecordDict]
"""The trainer's entry point: `client_node.trainer.service.handle_message`, bound."""


@dataclass(frozen=True)
class PollSchedule:
    """How often to ask the SuperNode for a task: fast while a run is active, slow when idle."""

    busy_s: float = 0.1
    idle_s: float = 1.0
    busy_window_s: float = 10.0  # a round's next wave usually follows within a few seconds
    # With the SuperNode's wake-ups: a fallback poll, should one be lost. Each poll costs the
    # executor and the SuperNode's Runtime API a request: every 1 s an idle node cost 2.31-3.00%
    # of a core, every 5 s 1.63% (bench/round_overhead.py's idle sample, 2026-12-06).
    woken_s: float = 5.0

    def wait_after(self, since_last_task_s: float, *, woken: bool = False) -> float:
        """Seconds to wait before the next poll, given the time since the last task (and
        whether the SuperNode wakes the executor when a task comes)."""
        if woken:
            return self.woken_s
        return self.busy_s if since_last_task_s < self.busy_window_s else self.idle_s


def node_retry_invoker(max_time_s: float = 30.0) -> RetryInvoker:
    """Retry transient Runtime API failures for a while, then raise.

    Flower's `make_simple_http_retry_invoker` sends SIGINT to the whole process on a 401 and
    its heartbeat sender does the same when a claim is lost: right for a throwaway
    flwr-clientapp, wrong for the node's trainer, which must outlive any one task.
    """

    def final(err: Exception) -> bool:
        if isinstance(err, httpx.HTTPStatusError):
            return err.response.status_code not in (502, 503, 504)
        return False

    return RetryInvoker(
        wait_gen_factory=lambda: exponential(base_delay=0.2, max_delay=5),
        recoverable_exceptions=(httpx.TransportError, httpx.HTTPStatusError),
        max_tries=None,
        max_time=max_time_s,
        should_giveup=final,
    )


class NodeExecutor:
    """Claims ClientApp tasks from the node's SuperNode and answers them with the trainer."""

    def __init__(
        self,
        handler: MessageHandler,
        runtime_address: str,
        *,
        auth_secret: bytes | None,
        schedule: PollSchedule | None = None,
        wake: WakeReceiver | None = None,
    ) -> None:
        self.handler = handler
        self.runtime_address = runtime_address
        self.auth_secret = auth_secret
        self.schedule = schedule or PollSchedule()
        self.wake = wake
        self.check_fab = FabChecker()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lepton-executor", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> NodeExecutor:
        """Start claiming tasks in a background thread."""
        # A task is claimable before the SuperNode holds all of its objects; Flower's 1 s
        # first retry would then be most of a round. The wait is bounded: a SuperNode that
        # lost its objects (the coordinator died mid-pull and the run ended) never gets them,
        # and with Flower's 2-hour bound this one thread would wait, serving no other run.
        shorten_object_pull_backoff(run_clientapp, max_time_s=TASK_INPUT_WAIT_S)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the task in hand (if any); wait at most `timeout` seconds."""
        self._stop.set()
        if self.wake is not None:
            self.wake.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def alive(self) -> bool:
        """True while the claiming loop runs."""
        return self._thread.is_alive()

    # -- the claiming loop ----------------------------------------------------------------

    def _client(self, extra: list[ProtobufClientInterceptor], *, retry: bool) -> RuntimeHttpClient:
        return RuntimeHttpClient.from_server_address(
            server_address=self.runtime_address,
            insecure=True,  # loopback only: the SuperNode's Runtime API binds 127.0.0.1
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name=COMPONENT_NAME), *extra],
            retry_invoker=node_retry_invoker() if retry else None,
        )

    def _acquire_client(self) -> RuntimeHttpClient:
        """No retries here: the loop itself retries at its own pace."""
        extra: list[ProtobufClientInterceptor] = []
        if self.auth_secret:
            extra.append(
                SuperExecAuthHttpInterceptor(
                    master_secret=self.auth_secret, protected_methods={ACQUIRE_TASK}
                )
            )
        return self._client(extra, retry=False)

    def _loop(self) -> None:
        client = self._acquire_client()
        last_task = float("-inf")
        unreachable_since: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    answer: AcquireTaskResponse = client.AcquireTask(
                        AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
                    )
                except (httpx.HTTPError, ValueError) as err:  # down, restarting, or garbled
                    if unreachable_since is None:
                        unreachable_since = time.monotonic()
                        log.info("waiting for the SuperNode's Runtime API: %s", err)
                    self._stop.wait(self.schedule.idle_s)
                    continue
                if unreachable_since is not None:
                    log.info("claiming tasks from the SuperNode at %s", self.runtime_address)
                    unreachable_since = None
                if answer.HasField("task") and answer.token:
                    self.run_task(answer.token, answer.task)
                    last_task = time.monotonic()
                    continue  # another message may already be waiting
                since = time.monotonic() - last_task
                self._pause(self.schedule.wait_after(since, woken=self.wake is not None))
        finally:
            client.close()

    def _pause(self, seconds: float) -> None:
        """Wait before the next poll: until the SuperNode signals a task, `stop`, or
        `seconds`."""
        if self.wake is None:
            self._stop.wait(seconds)
        else:
            self.wake.wait(seconds)

    # -- one task -------------------------------------------------------------------------

    def run_task(self, token: str, task: Task) -> None:
        """Serve one claimed task end to end; never raises."""
        claimed = time.time()
        client = self._client([RuntimeTokenHttpInterceptor(token)], retry=True)
        heartbeat = TaskHeartbeat(client, task_id=task.task_id)
        stages: dict[str, float] = {}
        message: Message | None = None
        context: Context | None = None
        reply: Message | None = None
        sub_status, details = SubStatus.FAILED, "The node failed before reading the task."
        try:
            heartbeat.start()
            message, context, _run, fab = pull_task_input(client)
            stages["input"] = time.time()
            reply, sub_status, details = self._answer(message, context, fab.content)
            stages["handled"] = time.time()
        except Exception as err:  # one bad task must not stop the node
            log.exception("task %d of run %d failed", task.task_id, task.run_id)
            details = f"The node's trainer failed: {type(err).__name__}: {err}"
            if message is not None:
                reply = _error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, details)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                    stages["pushed"] = time.time()
            except Exception:  # noqa: BLE001 - still report the task's end below
                log.exception("task %d: the reply could not be pushed", task.task_id)
                sub_status = SubStatus.FAILED
                details = "The node could not push its reply to the SuperNode."
            try:
                push_task_output(client, context, sub_status, details)
            except Exception:  # noqa: BLE001 - the claim then expires on the SuperNode's side
                log.exception("task %d: its end could not be reported", task.task_id)
            heartbeat.stop()
            client.close()
            if message is not None:
                _log_stages(task, message, claimed, stages)

    def _answer(self, message: Message, context: Context, fab: bytes) -> tuple[Message, str, str]:
        """The reply, the task's sub-status and its details; refusals are answered, not raised."""
        verdict = self.check_fab(fab)
        if not verdict.accepted:
            log.error("run %d: %s", message.metadata.run_id, verdict.reason)
            return (
                _error_reply(message, ErrorCode.INVALID_FAB, verdict.reason),
                SubStatus.FAILED,
                verdict.reason,
            )
        kind = MESSAGE_KINDS.get(message.metadata.message_type)
        if kind is None:
            reason = (
                f"The node does not handle Flower messages of type "
                f"{message.metadata.message_type!r}; expected one of {', '.join(MESSAGE_KINDS)}."
            )
            log.warning("run %d: %s", message.metadata.run_id, reason)
            return (
                _error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason),
                SubStatus.FAILED,
                reason,
            )
        envelope = Envelope(
            kind=kind,
            run_id=message.metadata.run_id,
            message_id=message.metadata.message_id,
            node_id=context.node_id,
        )
        try:
            records = unpack(message.content)
        except WireError as err:  # another wire version, or not a Lepton message
            log.error("run %d: %s", message.metadata.run_id, err)
            return (
                _error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, str(err)),
                SubStatus.FAILED,
                str(err),
            )
        content = self.handler(envelope, records)
        return Message(pack(content, per_record=False), reply_to=message), SubStatus.COMPLETED, ""


STAGES_PREFIX = "task stages "
"""The node log line that times one task (wall clock, seconds): when the ServerApp created the
message, when the executor claimed it, had its input, had the reply and had pushed it.
`bench/round_overhead.py` reads it; the timings stay in the node's own log."""


def _log_stages(task: Task, message: Message, claimed: float, stages: dict[str, float]) -> None:
    fields = {
        "task": task.task_id,
        "run": message.metadata.run_id,
        "type": message.metadata.message_type,
        "created": message.metadata.created_at,
        "claimed": claimed,
        **stages,
    }
    log.info("%s%s", STAGES_PREFIX, json.dumps(fields))


def _error_reply(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)


class TaskHeartbeat:
    """Keeps one task's claim alive while the trainer works on it (Flower's period).

    Unlike Flower's `HeartbeatSender`, a lost claim is logged, not answered with SIGINT: the
    trainer process serves every later task too.
    """

    def __init__(
        self, client: RuntimeHttpClient, *, task_id: int, interval_s: float = HEARTBEAT_INTERVAL_S
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lepton-heartbeat-{task_id}", daemon=True
        )

    def start(self) -> None:
        """Start beating (the first beat goes out at once, as Flower's does)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating; returns once the thread is done."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(HEARTBEAT_CALL_TIMEOUT + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alive = self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success
            except (httpx.HTTPError, ValueError) as err:
                log.warning("task %d: heartbeat failed (%s); retrying", self.task_id, err)
                alive = True
            if not alive:
                log.warning("task %d: the SuperNode dropped its claim", self.task_id)
                return
            self._stop.wait(self.interval_s)
