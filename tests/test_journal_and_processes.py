"""The run journal survives partial writes; process helpers fail with actionable errors."""

from __future__ import annotations

import socket
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
    QUIET_FLOWER_ENV,
    ManagedProcess,
    ProcessError,
    flower_env,
    port_is_free,
    require_free_port,
    wait_until,
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
