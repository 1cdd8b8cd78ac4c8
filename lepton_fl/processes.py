"""Starting, watching and stopping the OS processes we own (Flower's and our own).

Every process is started with Flower's telemetry and update check off, and is ended by
the PID we started it with, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

QUIET_FLOWER_ENV: Mapping[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # SuperExec polls for ClientApp/ServerApp tasks once a second by default.
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    "PYTHONUNBUFFERED": "1",
}


class ProcessError(RuntimeError):
    """A process we own failed to start or stopped unexpectedly."""

    def __init__(self, message: str, *, code: str = "process_failed") -> None:
        super().__init__(message)
        self.code = code


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Flower process: our own FLWR_HOME, nothing phones home."""
    env = dict(os.environ)
    env.update(QUIET_FLOWER_ENV)
    env["FLWR_HOME"] = str(flwr_home)
    # Flower starts flower-superexec and flwr-clientapp by name: use this environment's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if extra:
        env.update(extra)
    return env


def executable(name: str) -> str:
    """Path of a console script installed beside this interpreter (the venv's bin/)."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ProcessError(
            f"The program {name!r} was not found next to {sys.executable} or on PATH. "
            "Install Lepton FL into this environment (make setup) and try again.",
            code="missing_executable",
        )
    return found


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on host:port (checked by binding, as the server would).

    Servers bind with SO_REUSEADDR (uvicorn, nginx), so connections of a stopped server still
    in TIME-WAIT do not hold the port; the check binds the same way, or a restart would be
    refused for a minute although nothing listens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(host: str, port: int, *, what: str) -> None:
    """Fail with an actionable message if a port is taken."""
    if not port_is_free(host, port):
        raise ProcessError(
            f"Port {port} on {host} is already in use, so the {what} cannot listen there. "
            f"Stop whatever uses it (see `ss -ltnp | grep :{port}`) or choose another port.",
            code="port_in_use",
        )


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (for tests and the demo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    """A child process with its output in a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path | None = None
    die_with_parent: bool = False  # Linux: SIGKILL this child if the process that started it dies
    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the process in its own process group, logging to `log_path`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            _with_parent_death_signal(self.argv) if self.die_with_parent else list(self.argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(self.env),
            cwd=self.cwd,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        """PID of the started process."""
        if self._proc is None:
            raise ProcessError(f"{self.name} was never started.")
        return self._proc.pid

    def poll(self) -> int | None:
        """Exit code, or None while running."""
        return None if self._proc is None else self._proc.poll()

    def running(self) -> bool:
        """True while the process runs."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the process log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise with the log tail if the process has exited."""
        code = self.poll()
        if code is not None:
            raise ProcessError(
                f"{self.name} exited with code {code}. Last lines of {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL the process group we started, at once (a crash, for tests and benches)."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.stop()

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM the process group we started, then SIGKILL after `timeout`."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        elif proc is not None:
            # The leader is gone; its group may still hold children (Flower's SuperExec).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


def _with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """``argv`` run under ``setpriv --pdeathsig KILL`` where util-linux has it (Linux).

    The kernel then kills the child when the thread that started it dies, however it dies.
    (A ``preexec_fn`` would do the same, but forces a plain fork(), which gRPC's threads in
    the parent do not survive.) Without ``setpriv`` the command runs as it is.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return list(argv)
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: ManagedProcess | None = None,
) -> None:
    """Poll `predicate()` until true; fail with `what` (and the process log) on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if process is not None:
            process.check_alive()
        if predicate():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    detail = f" Last lines of {process.log_path}:\n{process.log_tail()}" if process else ""
    raise ProcessError(
        f"Timed out after {timeout:.0f} s waiting for {what}.{detail}", code="timeout"
    )


def port_accepts(host: str, port: int) -> bool:
    """True if a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
