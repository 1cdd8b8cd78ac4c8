"""The run journal survives partial writes; process helpers fail with actionable errors."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.fl.journal import (
    NodeRound,
    RoundRecord,
    RoundStarted,
    RunEnded,
    RunJournal,
    read_journal,
)
from lepton_fl.processes import (
    EPHEMERAL_RANGE_FILE,
    QUIET_FLOWER_ENV,
    ManagedProcess,
    ProcessError,
    flower_env,
    free_port,
    port_is_free,
    read_pid_file,
    require_free_port,
    wait_until,
    write_pid_file,
)


def test_journal_skips_a_half_written_last_line(tmp_path: Path) -> None:
    journal = RunJournal(tmp_path / "run.jsonl")
    journal.append(RoundStarted(round=1, nodes=("a",)))
    journal.append(
        RoundRecord(
            round=1,
            seconds=1.0,
            participants=("a",),
            num_examples=10,
            nodes={"a": NodeRound(status="ok")},
        )
    )
    with journal.path.open("a") as handle:
        handle.write('{"event": "round", "rou')  # a crash mid-write

    view = read_journal(journal.path)

    assert [type(e) for e in view.events] == [RoundStarted, RoundRecord]
    assert [r.round for r in view.rounds] == [1]
    assert not view.finished


def test_journal_failure_is_reported(tmp_path: Path) -> None:
    journal = RunJournal(tmp_path / "run.jsonl")
    journal.append(RunEnded(state="failed", reason="too few participants", kind="RunAbortedError"))

    view = read_journal(journal.path)

    assert view.finished
    assert view.failure == "too few participants"


def test_flower_env_turns_telemetry_and_update_check_off(tmp_path: Path) -> None:
    env = flower_env(tmp_path)

    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_HOME"] == str(tmp_path)
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert set(QUIET_FLOWER_ENV) <= set(env)


def test_require_free_port_names_the_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]

        with pytest.raises(ProcessError, match=f"Port {port} .* already in use") as caught:
            require_free_port("127.0.0.1", port, what="SuperLink")

    assert caught.value.code == "port_in_use"


def test_free_ports_are_never_ones_an_outgoing_connection_could_take() -> None:
    """A port for a server we start a moment later: below the range Linux draws the local
    ports of outgoing connections from, free, and never handed out twice."""
    low = int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    ports = [free_port() for _ in range(300)]

    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < low for port in ports)
    assert all(port_is_free("127.0.0.1", port) for port in ports[:20])


def test_wait_until_reports_a_dead_process_with_its_log(tmp_path: Path) -> None:
    process = ManagedProcess(
        name="failing",
        argv=[sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"],
        log_path=tmp_path / "failing.log",
    ).start()
    try:
        with pytest.raises(ProcessError, match="exited with code 3") as caught:
            wait_until(lambda: False, timeout=30, what="never", process=process)
        assert "boom: bad config" in str(caught.value)
    finally:
        process.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a reaped-later zombie is dead


def test_managed_process_stop_ends_the_whole_group(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(60)\n"
    )
    process = ManagedProcess(
        name="parent", argv=[sys.executable, "-c", script], log_path=tmp_path / "p.log"
    ).start()
    wait_until(lambda: child_pid.exists() and child_pid.read_text() != "", timeout=30, what="child")
    child = int(child_pid.read_text())

    process.stop(timeout=5)

    assert process.poll() is not None
    wait_until(lambda: not _alive(child), timeout=10, what="the child to end")


def test_a_port_held_only_by_time_wait_connections_is_free_but_a_listener_is_not() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    assert not port_is_free("127.0.0.1", port)  # a server listens there

    accepted.close()  # the server closes first: its side of the connection is in TIME-WAIT
    client.close()
    listener.close()

    assert port_is_free("127.0.0.1", port)  # a restarted server could bind it: so may we


def _orphan_script(tmp_path: Path) -> tuple[Path, Path]:
    """A script (run through its #! interpreter, as flower-superlink is) that starts a child
    in its own process group and writes that child's pid, then waits."""
    child_pid = tmp_path / "grandchild.pid"
    script = tmp_path / "long-lived-service"
    script.write_text(f"#!/bin/sh\nsleep 3000 &\necho $! > {child_pid}\nwait\n")
    script.chmod(0o755)
    return script, child_pid


def test_a_start_stops_the_orphan_an_earlier_start_left_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A parent that dies without stopping its child (here: it exits at once, and the child
    # was started without the parent-death signal) leaves an orphan, reparented away from it.
    script, grandchild_pid = _orphan_script(tmp_path)
    pid_file = tmp_path / "service.pid"
    starter = (
        "import os, pathlib\n"
        "from lepton_fl.processes import ManagedProcess\n"
        f"p = ManagedProcess(name='service', argv=[{str(script)!r}], "
        f"log_path=pathlib.Path({str(tmp_path / 'service.log')!r}), "
        f"pid_file=pathlib.Path({str(pid_file)!r})).start()\n"
        "print(p.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", starter], capture_output=True, text=True, timeout=60, check=True
    )
    orphan = int(done.stdout)
    wait_until(
        lambda: grandchild_pid.exists() and grandchild_pid.read_text() != "",
        timeout=30,
        what="the orphan's child",
    )
    grandchild = int(grandchild_pid.read_text())
    assert _alive(orphan)
    assert _alive(grandchild)
    record = read_pid_file(pid_file)
    assert record is not None
    assert record.pid == orphan
    assert record.argv == (str(script),)

    caplog.set_level(logging.WARNING, logger="lepton.processes")
    again = ManagedProcess(
        name="service", argv=[str(script)], log_path=tmp_path / "again.log", pid_file=pid_file
    ).start()
    try:
        assert not _alive(orphan)
        assert not _alive(grandchild)
        [line] = [r.getMessage() for r in caplog.records]
        assert f"stopping pid {orphan}" in line
        assert "service" in line
        new = read_pid_file(pid_file)
        assert new is not None
        assert new.pid == again.pid
    finally:
        again.stop(timeout=5)
    assert not pid_file.exists()  # a clean stop leaves no pid file


def test_a_start_stops_the_children_a_killed_leader_left_in_its_group(tmp_path: Path) -> None:
    """nginx's case: the master we started dies (its parent-death signal) and its workers,
    which it started, live on in its process group holding the port."""
    script, grandchild_pid = _orphan_script(tmp_path)
    pid_file = tmp_path / "service.pid"
    first = ManagedProcess(
        name="service", argv=[str(script)], log_path=tmp_path / "first.log", pid_file=pid_file
    ).start()
    wait_until(
        lambda: grandchild_pid.exists() and grandchild_pid.read_text() != "",
        timeout=30,
        what="the leader's child",
    )
    worker = int(grandchild_pid.read_text())
    os.kill(first.pid, signal.SIGKILL)  # the leader alone
    wait_until(lambda: first.poll() is not None, timeout=10, what="the leader to die")
    assert _alive(worker)

    again = ManagedProcess(
        name="service", argv=[str(script)], log_path=tmp_path / "again.log", pid_file=pid_file
    ).start()
    try:
        assert not _alive(worker)
    finally:
        again.stop(timeout=5)


def test_a_pid_file_naming_a_dead_or_unrelated_process_kills_nothing(tmp_path: Path) -> None:
    pid_file = tmp_path / "service.pid"
    argv = ["sleep", "3000"]
    # A process with another command line under the recorded pid: not ours.
    unrelated = subprocess.Popen(["sleep", "3001"], start_new_session=True)
    dead = subprocess.Popen(["sleep", "3000"])
    dead.kill()
    dead.wait()
    try:
        for pid in (unrelated.pid, dead.pid):
            write_pid_file(pid_file, pid, argv)
            ours = ManagedProcess(
                name="service", argv=argv, log_path=tmp_path / "s.log", pid_file=pid_file
            ).start()
            ours.stop(timeout=5)
            assert unrelated.poll() is None  # still running, untouched
            assert not pid_file.exists()
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_child_whose_starter_still_runs_is_no_orphan(tmp_path: Path) -> None:
    # Two starts on one directory at once: the second must not kill the first one's child.
    pid_file = tmp_path / "service.pid"
    argv = ["sleep", "3000"]
    first = ManagedProcess(
        name="service", argv=argv, log_path=tmp_path / "1.log", pid_file=pid_file
    ).start()
    try:
        second = ManagedProcess(
            name="service", argv=argv, log_path=tmp_path / "2.log", pid_file=pid_file
        )
        with pytest.raises(ProcessError, match="still running") as caught:
            second.start()
        assert caught.value.code == "already_running"
        assert first.running()
        record = read_pid_file(pid_file)
        assert record is not None
        assert record.pid == first.pid
    finally:
        first.stop(timeout=5)
