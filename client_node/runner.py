"""`lepton node start`: the long-lived trainer daemon plus the node's SuperNode.

Order matters: the installed Flower is checked first (the executor speaks its internal Runtime
API); the data, the model engine and the ledger are loaded and checked next, so an
unreadable ledger stops the node before it ever joins a federation; then the trainer serves its
metrics endpoint on loopback (`client_node.metrics`, ``[metrics]``) and its
readiness socket and starts its executor (`client_node.executor`: the thread that claims the
SuperNode's tasks and answers them in this process); then the SuperNode connects to the
SuperLink. A node killed and restarted simply starts claiming again.

Data that fails its connector's checks (as opposed to a node.toml that names an unknown task
or partition, or declares columns the task cannot use, which stops the node like any other
configuration error) does not stop the node: the trainer stays up, logs the connector's
message and refuses every request with ``data_invalid`` and that message, which reaches the
run's status at the coordinator (no row ever leaves the node).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import torch

from client_node.connectors import ConnectorError, empty_split, load_node_data
from client_node.executor import NodeExecutor
from client_node.ledger import Ledger
from client_node.metrics import MetricsServer, ReplyCounter
from client_node.settings import NodeConfigError, NodeSettings
from client_node.stale_session import end_previous_session, previous_node_id
from client_node.supernode import (
    new_superexec_secret,
    runtime_address,
    start_supernode,
    superexec_secret_path,
    supernode_log_path,
)
from client_node.supernode_launcher import STALE_SESSION_S
from client_node.trainer.core import NodeTrainer
from client_node.trainer.dp_sgd import resolve_device
from client_node.trainer.secure import SecureAggregation
from client_node.trainer.service import TrainerServer, handle_message
from client_node.wake import open_receiver, wake_socket_path
from lepton_fl.datasets import LocalSplit, get_task
from lepton_fl.flower_pins import check_flower_version
from lepton_fl.processes import ProcessError

log = logging.getLogger("lepton.node")

REFUSED_EXIT = 305  # flower-supernode's exit code when the SuperLink refuses to activate it


def run_node(settings: NodeSettings, *, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); return the process exit code."""
    stop = stop or threading.Event()
    check_flower_version()
    settings.node.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    split, data_error = load_site_data(settings)
    try:
        device = resolve_device(settings.node.device)
    except ValueError as err:
        raise NodeConfigError(
            f"node.device = {settings.node.device!r} cannot be used on this machine: {err}.",
            code="device_unavailable",
        ) from err
    torch.set_num_threads(settings.node.torch_threads)
    ledger = Ledger(settings.ledger_path)
    trainer = NodeTrainer(
        settings=settings, split=split, ledger=ledger, device=device, data_error=data_error
    )
    secure = SecureAggregation(trainer)
    restarted = superexec_secret_path(settings).exists()  # this state dir ran a node before
    replies = ReplyCounter()
    wake = open_receiver(wake_socket_path(settings.node.state_dir))  # before the SuperNode
    executor = NodeExecutor(
        replies.wrap(functools.partial(handle_message, trainer, secure)),
        runtime_address(settings),
        auth_secret=new_superexec_secret(settings),
        wake=wake,
    )
    metrics = MetricsServer(settings, ledger, replies) if settings.metrics.enabled else None
    if metrics is not None:
        try:
            metrics.start()  # before the SuperNode: a port in use stops the node at once
        except BaseException:
            ledger.close()
            raise
    server = TrainerServer(settings.trainer_socket)
    server.start()
    log.info(
        "node %s: trainer ready on %s (%d train / %d test rows of %s, device %s)",
        settings.node.name,
        settings.trainer_socket,
        len(split.train),
        len(split.test),
        settings.dataset_id,
        device,
    )
    _install_signal_handlers(stop)
    try:
        executor.start()
        _supervise_supernode(settings, stop, executor, restarted=restarted)
        return 0
    finally:
        executor.stop()
        if wake is not None:
            wake.close()
        server.stop()
        if metrics is not None:
            metrics.stop()
        ledger.close()


REACTIVATION_GRACE_S = STALE_SESSION_S + 10.0
"""How long a node retries a refused activation (flower-supernode exit 305) before it gives
up: 30 s. A node killed without saying goodbye still counts as online at the SuperLink for up
to `STALE_SESSION_S` (20 s with our SuperNode's heartbeat interval) after its last heartbeat,
and the SuperLink refuses to activate its key again until then, with the very answer it gives
an unregistered key (a node cannot tell the two apart)."""
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 3.0
"""The backoff between activation attempts while refused: 1, 2, 3, 3, ... s (each attempt
starts a flower-supernode process, about a second of CPU)."""


def _supervise_supernode(
    settings: NodeSettings, stop: threading.Event, executor: NodeExecutor, *, restarted: bool
) -> None:
    """Run the SuperNode until `stop`; raise if it or the executor dies for good.

    A refused activation is retried with a bounded backoff for `REACTIVATION_GRACE_S`,
    announced by one log line that says what the node waits for. At the first refusal the
    node ends its own previous session, left open by a crash, with the goodbye its
    predecessor could not send (`client_node.stale_session`), and retries at once: a node
    restarted after a kill is back within seconds, not after the session's lapse. Fresh
    nodes retry too (no earlier start in the state directory, so no node id to end a session
    of): a node re-installed, or a container restarted without its state volume, with the key
    of a node that was just killed hits the same stale session. After the grace the error
    names both causes plainly.
    """
    started = time.monotonic()
    refusals, activated, short_sessions = 0, False, 0
    log_path = supernode_log_path(settings)
    offset = _size(log_path)  # this attempt's lines start here (every start appends)
    supernode = start_supernode(settings)
    try:
        while not stop.wait(0.5):
            code = supernode.poll()
            if code is not None and activated:
                # The SuperLink ended a session it had accepted: it restarted (its state is
                # in memory, so it forgot every session) or this node's key was unregistered.
                # Start again: a restarted SuperLink has the key registered anew, and a
                # revoked key ends in the refusal below with its message.
                lasted = time.monotonic() - started
                short_sessions = short_sessions + 1 if lasted < SESSION_SETTLED_S else 0
                delay = min(RETRY_FIRST_S * 2 ** max(short_sessions - 1, 0), LOST_RETRY_MAX_S)
                log.warning(
                    "node %s: its SuperNode left the SuperLink after %.0f s (exit %s): the "
                    "coordinator restarted, or the key was unregistered; reconnecting in %.0f s",
                    settings.node.name,
                    lasted,
                    code,
                    delay,
                )
                supernode.stop()
                if stop.wait(delay):
                    return
                started, refusals, activated = time.monotonic(), 0, False
                offset = _size(log_path)
                supernode = start_supernode(settings, check_port=False)
                continue
            if code is not None:
                tail = _lines_since(log_path, offset)
                elapsed = time.monotonic() - started
                refused = flower_exit_code(code, tail) == REFUSED_EXIT
                if refused and elapsed < REACTIVATION_GRACE_S:
                    ended = False
                    if refusals == 0:
                        log.warning(_refusal_line(settings, elapsed, restarted=restarted))
                        node_id = previous_node_id(log_path)
                        ended = node_id is not None and end_previous_session(settings, node_id)
                    refusals += 1
                    delay = 0.0 if ended else min(RETRY_FIRST_S * 2 ** (refusals - 1), RETRY_MAX_S)
                    log.debug("node %s: activation refused %d times", settings.node.name, refusals)
                    supernode.stop()
                    if stop.wait(delay):
                        return
                    offset = _size(log_path)
                    supernode = start_supernode(settings, check_port=False)
                    continue
                waited = elapsed if refused and refusals else None
                raise ProcessError(_supernode_exit_message(settings, code, tail, waited_s=waited))
            if not activated and _activated_since(log_path, offset):
                activated = True
                if refusals:
                    log.info(
                        "node %s: the SuperLink activated it after %.0f s (%d refused attempts)",
                        settings.node.name,
                        time.monotonic() - started,
                        refusals,
                    )
            if not executor.alive():
                raise ProcessError(f"node {settings.node.name}: the task executor stopped.")
    finally:
        supernode.stop()


SESSION_SETTLED_S = 5.0
"""A SuperNode session that lasted this long resets the reconnection backoff: only sessions
dropped within seconds of their activation (a key unregistered, a SuperLink that keeps
crashing) back off. A coordinator restarted twice within a minute is not a loop: with a
60 s threshold the drill's nodes waited 1, 2, 4, 8, 16 s after successive restarts and the
next run's first round grew from 7 s to 38 s."""
LOST_RETRY_MAX_S = 30.0
"""The longest wait before reconnecting after sessions that keep ending early (1, 2, 4 … 30 s)."""


def _activated_since(path: Path, offset: int) -> bool:
    """Whether Flower logged the node's activation after byte `offset` of its log."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return ACTIVATED_MARK.encode() in handle.read()
    except OSError:
        return False


ACTIVATED_MARK = "SuperNode ID:"  # flwr 1.42 logs it once the SuperLink activated the node


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _lines_since(path: Path, offset: int, lines: int = 40) -> str:
    """The last `lines` lines written to `path` after byte `offset`."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _refusal_line(settings: NodeSettings, elapsed: float, *, restarted: bool) -> str:
    """The one log line a refused activation gets: what the node waits for, and how long."""
    expires = max(0, math.ceil(STALE_SESSION_S - elapsed))
    retry = max(0, math.ceil(REACTIVATION_GRACE_S - elapsed))
    name, key = settings.node.name, settings.auth.private_key
    if restarted:
        return (
            f"node {name}: the SuperLink refused to activate it (flower-supernode exit "
            f"{REFUSED_EXIT}): it still holds this node's previous session, which ended "
            f"without a goodbye (killed or crashed), until that expires within {expires} s. "
            f"Retrying for up to {retry} s."
        )
    return (
        f"node {name}: the SuperLink refused to activate it (flower-supernode exit "
        f"{REFUSED_EXIT}): either a session with its key {key} is still online there (a node "
        f"with this key killed moments ago; it expires within {expires} s), or the key is not "
        f"registered. Retrying for up to {retry} s."
    )


CONFIG_ERRORS = frozenset(
    {
        "unknown_task",
        "unknown_partition",
        "bad_argument",
        "schema_mismatch",
        "duplicate_task",  # two installed sources register one task name
        "bad_task",  # a lepton_fl.tasks entry point fails to load
    }
)
"""Connector failures that are node.toml's own mistakes (or the installed tasks'): the node
refuses to start with them.

Every other failure is about the data itself (a missing or broken file, a bad row): the trainer
starts anyway and refuses every request with ``data_invalid``.
"""


def load_site_data(settings: NodeSettings) -> tuple[LocalSplit, str | None]:
    """The node's checked data, or an empty stand-in and the connector's message."""
    try:
        return load_node_data(settings), None
    except ConnectorError as err:
        if err.code in CONFIG_ERRORS:  # node.toml itself is wrong: fix it before starting
            raise NodeConfigError(str(err), code=err.code) from err
        log.error(
            "node %s: its data cannot be used; the trainer stays up and refuses every request "
            "(code data_invalid) until it is fixed: %s",
            settings.node.name,
            err,
        )
        task = get_task(settings.data.task)  # known: an unknown task is a config error
        split = empty_split(settings.data.partition, task.modality, task.num_classes)
        return split, data_refusal(err)


def data_refusal(err: ConnectorError) -> str:
    """What a ``data_invalid`` refusal tells the coordinator: the connector's code and the
    column, never the file's path, a row number, a count or a value (those are facts about the
    site's data, and they stay in the node's log and ``lepton node check-data``)."""
    where = f" in column {err.column!r}" if err.column else ""
    return (
        f"The data connector reports {err.code}{where}. The node's log and `lepton node "
        "check-data` on the node say which file and row, and how to fix it."
    )


def flower_exit_code(returncode: int, log_tail: str) -> int:
    """Flower's own exit code: flower-supernode exits 1 and logs 'Exit Code: N'."""
    found = re.findall(r"Exit Code: (\d+)", log_tail)
    return int(found[-1]) if found else returncode


def _supernode_exit_message(
    settings: NodeSettings, code: int, tail: str, *, waited_s: float | None = None
) -> str:
    code = flower_exit_code(code, tail)
    if code == REFUSED_EXIT:
        waited = f" for {waited_s:.0f} s" if waited_s is not None else ""
        return (
            f"The SuperLink at {settings.superlink.address} refused to activate node "
            f"{settings.node.name!r}{waited} (flower-supernode exit {code}). Flower gives the "
            "same answer for two causes: (1) its key "
            f"{settings.auth.private_key} is not registered: ask the coordinator to register "
            "the matching .pub key, then restart the node; (2) a session with this key is "
            "still online at the SuperLink: another node is running with the same key (stop "
            "it: each node needs its own key), or a previous session has not expired yet "
            "(restart the node in a minute)."
        )
    return (
        f"flower-supernode for node {settings.node.name!r} exited with code {code}. "
        f"Last lines of its log:\n{tail}"
    )


def _install_signal_handlers(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
