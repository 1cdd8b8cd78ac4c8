"""A wake-up from the node's SuperNode to its executor: a message is ready to claim.

Flower's Runtime API has no push: an executor learns of a task only by asking the SuperNode
(``AcquireTask``). Asked every 0.1 s while a run is active, that is ten requests a second per
node, each served by the SuperNode's Python process: with 20 nodes on one 2-core host, the
polls alone took most of the CPU a round needed. Instead, our SuperNode launcher
(`client_node.supernode_launcher`) sends one empty datagram to a Unix socket in the node's
state directory whenever it has stored a message together with all its objects, and the
executor waits on that socket. It still asks now and then (`PollSchedule.woken_s`), in case a
wake-up is ever lost.

The datagram carries nothing. The socket lives in the node's state directory (mode 0700) and
is itself 0600, and whoever could reach it could only cause one extra ``AcquireTask``, which
the SuperExec secret still guards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
from pathlib import Path

log = logging.getLogger("lepton.executor")

WAKE_ENV = "LEPTON_EXECUTOR_WAKE"
"""The environment variable that tells the SuperNode launcher where the executor listens."""
SOCKET_NAME = "executor.wake"
"""The socket's file name in the node's state directory."""
MAX_PATH_BYTES = 107
"""The longest path a Linux Unix socket can bind (108 bytes with the terminating NUL)."""


def wake_socket_path(state_dir: Path) -> Path:
    """Where the executor of the node with this state directory listens."""
    return state_dir / SOCKET_NAME


class WakeReceiver:
    """The executor's end: a datagram socket it waits on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a node that was killed
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.bind(str(path))
            path.chmod(0o600)
        except OSError:
            self._sock.close()
            raise

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a wake-up; True if one (or several) came."""
        ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while True:
                self._sock.recv(16)
        return True

    def wake(self) -> None:
        """Wake the waiting executor from this process (to stop it)."""
        send_wake(str(self.path))

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def open_receiver(path: Path) -> WakeReceiver | None:
    """A receiver at `path`, or None (logged) where it cannot bind there: the executor then
    polls the SuperNode at its busy rate, as it did before wake-ups."""
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        log.warning(
            "the executor's wake-up socket path %s is longer than %d bytes; the executor "
            "polls the SuperNode instead (choose a shorter [node] state_dir)",
            path,
            MAX_PATH_BYTES,
        )
        return None
    try:
        return WakeReceiver(path)
    except OSError as err:
        log.warning("no wake-up socket at %s (%s); the executor polls instead", path, err)
        return None


def send_wake(path: str) -> None:
    """Send one empty datagram to `path`; never raises (nobody listening is not an error)."""
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        sock.setblocking(False)
        sock.sendto(b"", path)
