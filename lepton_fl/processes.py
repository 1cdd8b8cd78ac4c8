"""Starting, watching and stopping the OS processes we own (Flower's and our own).

Every process is started with Flower's telemetry and update check off, and is ended by
the PID we started it with, never by name.

Long-lived children also leave a pid file (`ManagedProcess.pid_file`): the second line of
defence against orphans, after the parent-death signal. If whatever started a child died
without taking it along (no ``setpriv``, a child that escaped its parent-death signal), the
next start finds the pid file, checks that the process is still the one we started (its
``/proc/<pid>/cmdline`` is the recorded command line, and its start time the recorded one)
and that its parent is gone, and stops it before starting anew (`stop_orphan`). A pid file
that names a dead process or another command is only removed: we never kill a process we
did not start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
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

log = logging.getLogger("lepton.processes")

QUIET_FLOWER_ENV: Mapping[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # SuperExec polls for ClientApp/ServerApp tasks once a second by default.
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    "PYTHONUNBUFFERED": "1",
}

ORPHAN_GRACE_S = 10.0
"""How long an orphan gets to end after SIGTERM before it is killed."""


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


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
"""Where Linux keeps the range it draws the local ports of outgoing connections from."""
_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, below the ephemeral range (for tests and the demo).

    A port the OS hands out for ``bind(0)`` comes from the range it also gives outgoing
    connections; between our choosing it and a server binding it (a SuperNode's Runtime API,
    a second later), a connection of another process may take it, and the server fails to
    start (seen with 10 nodes starting at once). Ports below that range are never given to a
    connection, so only another listener could take them."""
    low = _ephemeral_low()
    candidates = list(range(max(1024, low - 16384), low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        if port not in _HANDED_OUT and port_is_free(host, port):
            _HANDED_OUT.add(port)  # never twice in one process: it may not be bound yet
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # crowded: the OS picks
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the ephemeral range (32768 where it cannot be read)."""
    try:
        return max(2048, int(EPHEMERAL_RANGE_FILE.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768


@dataclass
class ManagedProcess:
    """A child process with its output in a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path | None = None
    die_with_parent: bool = False  # Linux: SIGKILL this child if the process that started it dies
    pid_file: Path | None = None  # record pid and command line here; stop an orphan left there
    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the process in its own process group, logging to `log_path` (first stopping
        an orphan that an earlier start left in `pid_file`, and recording this one there)."""
        self.stop_orphan()
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
        if self.pid_file is not None:
            write_pid_file(self.pid_file, self._proc.pid, self.argv)
        return self

    def stop_orphan(self, *, grace: float = ORPHAN_GRACE_S) -> bool:
        """Stop what an earlier start left running in `pid_file` (see `stop_orphan`); call it
        before checking ports the orphan would hold. True if one was stopped."""
        if self.pid_file is None:
            return False
        return stop_orphan(self.pid_file, name=self.name, grace=grace)

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
        if proc is not None and self.pid_file is not None:
            remove_pid_file(self.pid_file, pid=proc.pid)
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(frozen=True)
class PidRecord:
    """What a pid file says: the process we started, and who started it."""

    pid: int
    argv: tuple[str, ...]
    start_ticks: int | None  # /proc/<pid>/stat field 22: tells a reused pid apart
    parent: int  # the process that started it
    parent_start_ticks: int | None


def write_pid_file(path: Path, pid: int, argv: Sequence[str]) -> None:
    """Record `pid`, its exact command line and its starter in `path` (0600, atomically)."""
    parent = os.getpid()
    record = {
        "pid": pid,
        "argv": list(argv),
        "start_ticks": _start_ticks(pid),
        "parent": parent,
        "parent_start_ticks": _start_ticks(parent),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{parent}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(record, out)
    partial.replace(path)


def read_pid_file(path: Path) -> PidRecord | None:
    """The record in `path`, or None if there is none or it cannot be read."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return PidRecord(
            pid=int(raw["pid"]),
            argv=tuple(str(a) for a in raw["argv"]),
            start_ticks=None if raw.get("start_ticks") is None else int(raw["start_ticks"]),
            parent=int(raw["parent"]),
            parent_start_ticks=(
                None if raw.get("parent_start_ticks") is None else int(raw["parent_start_ticks"])
            ),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_pid_file(path: Path, *, pid: int | None = None) -> None:
    """Remove `path` (only if it names `pid`, when given: a newer start may own it now)."""
    if pid is not None:
        record = read_pid_file(path)
        if record is not None and record.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def is_our_process(record: PidRecord) -> bool:
    """True if `record.pid` is alive and still the process we started: same start time (when
    recorded) and the recorded command line.

    The command line matches if ``/proc/<pid>/cmdline`` is the recorded one, or ends with it
    after a space: the kernel puts a script's interpreter in front of it (``python3
    .../flower-superlink ...``), and nginx retitles its master (``nginx: master process
    /usr/sbin/nginx -p ...``).
    """
    if record.start_ticks is not None and _start_ticks(record.pid) != record.start_ticks:
        return False  # dead, or the pid now belongs to another process
    actual = _cmdline(record.pid)
    if not actual or not _alive(record.pid):
        return False
    joined, recorded = " ".join(actual), " ".join(record.argv)
    return joined == recorded or joined.endswith(" " + recorded)


def stop_orphan(path: Path, *, name: str, grace: float = ORPHAN_GRACE_S) -> bool:
    """Stop the process `path` names if it is one we started whose starter is gone; remove
    the file. True if a process was stopped.

    A file naming a dead process or another command is removed, nothing is killed. A process
    whose starter still runs (another coordinator or node on the same directory) is not an
    orphan: that raises `ProcessError` (code ``already_running``) and touches nothing.
    """
    record = read_pid_file(path)
    if record is not None and _group_outlived_leader(record.pid):
        # The process we started died (its parent-death signal), but its own children live
        # on in its process group (nginx's workers hold the listening socket). Linux does not
        # reuse a pid while a process group carries it, so that group is still ours.
        log.warning(
            "%s: stopping what pid %d left running in its process group (%s)",
            name,
            record.pid,
            path,
        )
        _end_group(record.pid, grace=grace)
        remove_pid_file(path)
        return True
    if record is None or not is_our_process(record):
        remove_pid_file(path)
        return False
    starter_runs = (
        record.parent_start_ticks is not None
        and _parent(record.pid) == record.parent
        and _start_ticks(record.parent) == record.parent_start_ticks
        and _alive(record.parent)
    )
    if starter_runs:
        raise ProcessError(
            f"{name} (pid {record.pid}) is still running, started by process "
            f"{record.parent}, which also still runs: another instance is using "
            f"{path.parent}. Stop it first, or give this one its own directory.",
            code="already_running",
        )
    log.warning(
        "%s: stopping pid %d, left running by an earlier start that ended without stopping it (%s)",
        name,
        record.pid,
        path,
    )
    _terminate(record, grace=grace)
    remove_pid_file(path)
    return True


def _terminate(record: PidRecord, *, grace: float) -> None:
    """SIGTERM the orphan (its process group, if it leads one), then SIGKILL after `grace`."""
    pid = record.pid
    group = False
    with contextlib.suppress(OSError):
        group = os.getpgid(pid) == pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if not is_our_process(record):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and is_our_process(record):
            time.sleep(0.05)
    if is_our_process(record):
        raise ProcessError(
            f"pid {pid} ({' '.join(record.argv)}) survived SIGKILL; stop it by hand.",
            code="orphan_survived",
        )


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _group_outlived_leader(pgid: int) -> bool:
    """True if process `pgid` is gone but its process group still has members."""
    if _alive(pgid):
        return False
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _end_group(pgid: int, *, grace: float) -> None:
    """SIGTERM process group `pgid`, then SIGKILL what is left after `grace`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has ended


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


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
