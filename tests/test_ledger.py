"""The node's persistent privacy ledger, on real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from client_node.ledger import SCHEMA_VERSION, Ledger, LedgerEntry, LedgerError
from lepton_fl.privacy import AccountantStep, check_round, epsilon_spent

S = AccountantStep
DELTA = 1e-5
REPO = Path(__file__).resolve().parents[1]


def _charge(
    ledger: Ledger, dataset_id: str, run_id: str, round: int, step: S | None = None
) -> LedgerEntry:
    step = step or S(1.0, 0.01, 100)
    return ledger.record(
        dataset_id=dataset_id,
        run_id=run_id,
        round=round,
        step=step,
        accountant="rdp",
        delta=DELTA,
        epsilon_after=0.1 * round,
        num_examples=250,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "node" / "ledger.sqlite3"


def test_ledger_persists_across_restart(path: Path) -> None:
    with Ledger(path) as ledger:
        first = _charge(ledger, "heart", "run-1", 1, S(1.1, 0.02, 50))
        _charge(ledger, "heart", "run-1", 2, S(1.1, 0.02, 50))
    with Ledger(path) as reopened:  # a new trainer process after a restart
        assert reopened.history("heart") == [S(1.1, 0.02, 50), S(1.1, 0.02, 50)]
        assert reopened.entry_for("heart", "run-1", 1) == first
        _charge(reopened, "heart", "run-2", 1)  # a new run composes, never resets
        assert len(reopened.history("heart")) == 3


def test_ledger_entry_fields_round_trip(path: Path) -> None:
    with Ledger(path) as ledger:
        entry = _charge(ledger, "heart", "run-1", 3, S(0.9, 0.05, 7))
    assert entry.step == S(0.9, 0.05, 7)
    assert (entry.dataset_id, entry.run_id, entry.round, entry.num_examples) == (
        "heart",
        "run-1",
        3,
        250,
    )
    assert entry.recorded_at.endswith("+00:00")
    with Ledger(path, read_only=True) as reader:
        assert reader.entries() == [entry]


def test_ledger_separates_datasets(path: Path) -> None:
    with Ledger(path) as ledger:
        _charge(ledger, "heart", "run-1", 1, S(1.0, 0.01, 10))
        _charge(ledger, "credit", "run-1", 1, S(2.0, 0.05, 20))
        _charge(ledger, "heart", "run-1", 2, S(1.0, 0.01, 30))
        assert ledger.history("heart") == [S(1.0, 0.01, 10), S(1.0, 0.01, 30)]
        assert ledger.history("credit") == [S(2.0, 0.05, 20)]
        assert ledger.history("unknown") == []
        assert [e.dataset_id for e in ledger.entries()] == ["heart", "credit", "heart"]


def test_ledger_keeps_insertion_order(path: Path) -> None:
    with Ledger(path) as ledger:
        for run_id, round in [("run-b", 5), ("run-a", 1), ("run-b", 2), ("run-a", 9)]:
            _charge(ledger, "heart", run_id, round)
        expected = [("run-b", 5), ("run-a", 1), ("run-b", 2), ("run-a", 9)]
        assert [(e.run_id, e.round) for e in ledger.entries("heart")] == expected


def test_ledger_refuses_duplicate_round_and_loses_nothing(path: Path) -> None:
    with Ledger(path) as ledger:
        original = _charge(ledger, "heart", "run-1", 1, S(1.0, 0.01, 10))
        with pytest.raises(LedgerError, match="already holds a charge") as caught:
            _charge(ledger, "heart", "run-1", 1, S(5.0, 0.5, 999))
        assert caught.value.code == "duplicate_round"
        assert "entry_for" in str(caught.value)
        _charge(ledger, "heart", "run-1", 2)  # the ledger is still usable
        _charge(ledger, "credit", "run-1", 1)  # same run and round, other dataset: fine
    with Ledger(path) as reopened:
        assert reopened.entry_for("heart", "run-1", 1) == original
        assert len(reopened.entries()) == 3


def test_ledger_budget_survives_restart(path: Path) -> None:
    planned = S(1.0, 0.01, 1000)
    with Ledger(path) as ledger:
        for round in (1, 2):
            history = ledger.history("heart")
            decision = check_round(history, planned, budget=3.0, delta=DELTA, accountant="rdp")
            assert decision.allowed
            ledger.record(
                dataset_id="heart",
                run_id="run-1",
                round=round,
                step=planned,
                accountant="rdp",
                delta=DELTA,
                epsilon_after=decision.epsilon_after,
                num_examples=250,
            )
    with Ledger(path) as restarted:
        history = restarted.history("heart")
        assert epsilon_spent(history, delta=DELTA, accountant="rdp") == pytest.approx(
            restarted.entries("heart")[-1].epsilon_after
        )
        decision = check_round(history, planned, budget=3.0, delta=DELTA, accountant="rdp")
        assert not decision.allowed  # the third round would pass 3.0


def test_ledger_rejects_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"\x00garbage, not a database\xff" * 200)
    for read_only in (False, True):
        with pytest.raises(LedgerError, match="not a readable SQLite database") as caught:
            Ledger(path, read_only=read_only)
        assert caught.value.code == "corrupt"
        assert str(path) in str(caught.value)
        assert "backup" in str(caught.value)
    assert path.read_bytes().startswith(b"\x00garbage")  # left untouched


def test_ledger_rejects_directory_path(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="is a directory") as caught:
        Ledger(tmp_path)
    assert caught.value.code == "path_is_directory"
    assert str(tmp_path / "ledger.sqlite3") in str(caught.value)


def test_ledger_refuses_newer_schema(path: Path) -> None:
    Ledger(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(LedgerError, match="Upgrade lepton-fl") as caught:
        Ledger(path)
    assert caught.value.code == "schema_too_new"


def test_ledger_refuses_foreign_database(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE users (name TEXT)")
    raw.close()
    with pytest.raises(LedgerError, match="not a Lepton FL ledger") as caught:
        Ledger(path)
    assert caught.value.code == "not_a_ledger"


def test_ledger_uses_wal_and_records_schema_version(path: Path) -> None:
    with Ledger(path):
        raw = sqlite3.connect(path)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        raw.close()


def test_ledger_entries_are_append_only(path: Path) -> None:
    with Ledger(path) as ledger:
        _charge(ledger, "heart", "run-1", 1)
        raw = sqlite3.connect(path)
        for statement in ("UPDATE ledger_entries SET steps = 0", "DELETE FROM ledger_entries"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                raw.execute(statement)
        raw.close()
        assert len(ledger.entries()) == 1


def test_ledger_reader_sees_commits_while_writer_open(path: Path) -> None:
    with Ledger(path) as writer:
        _charge(writer, "heart", "run-1", 1)
        with Ledger(path, read_only=True) as reader:
            assert len(reader.entries("heart")) == 1
            _charge(writer, "heart", "run-1", 2)
            assert [e.round for e in reader.entries("heart")] == [1, 2]
            with pytest.raises(LedgerError, match="read-only") as caught:
                _charge(reader, "heart", "run-1", 3)
            assert caught.value.code == "read_only"


def test_ledger_writer_not_blocked_by_open_read_transaction(path: Path) -> None:
    with Ledger(path) as writer:
        _charge(writer, "heart", "run-1", 1)
        reader = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 1
        _charge(writer, "heart", "run-1", 2)  # WAL: commits while the read is open
        assert reader.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 1
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 2
        reader.close()


def test_ledger_reader_in_another_process(path: Path) -> None:
    script = (
        "import json, sys\n"
        "from client_node.ledger import Ledger\n"
        "with Ledger(sys.argv[1], read_only=True) as ledger:\n"
        "    print(json.dumps([[e.run_id, e.round] for e in ledger.entries('heart')]))\n"
    )

    def read_elsewhere() -> Any:
        result = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return json.loads(result.stdout)

    with Ledger(path) as writer:
        _charge(writer, "heart", "run-1", 1)
        assert read_elsewhere() == [["run-1", 1]]
        _charge(writer, "heart", "run-1", 2)
        assert read_elsewhere() == [["run-1", 1], ["run-1", 2]]


def test_ledger_allows_only_one_writer(path: Path) -> None:
    with Ledger(path):
        with pytest.raises(LedgerError, match="Only one trainer") as caught:
            Ledger(path)
        assert caught.value.code == "locked_by_other_writer"
    with Ledger(path) as again:  # released on close
        assert again.entries() == []


def test_ledger_is_safe_across_threads(path: Path) -> None:
    with Ledger(path) as ledger:
        threads = [
            threading.Thread(target=_charge, args=(ledger, "heart", f"run-{t}", r))
            for t in range(4)
            for r in range(1, 6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(ledger.entries("heart")) == 20


def test_ledger_read_only_needs_an_existing_file(path: Path) -> None:
    with pytest.raises(LedgerError, match="There is no ledger") as caught:
        Ledger(path, read_only=True)
    assert caught.value.code == "missing"
    assert not path.exists()


def test_ledger_closed_refuses_use(path: Path) -> None:
    ledger = Ledger(path)
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(LedgerError, match="is closed") as caught:
        ledger.history("heart")
    assert caught.value.code == "closed"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"dataset_id": ""}, "dataset_id must be a non-empty string"),
        ({"run_id": None}, "run_id must be a non-empty string"),
        ({"round": -1}, "round must be a whole number"),
        ({"step": (1.0, 0.01, 10)}, "step must be an AccountantStep"),
        ({"accountant": "gdp"}, "accountant must be 'rdp' or 'prv'"),
        ({"delta": 0.0}, "delta must be a number strictly between 0 and 1"),
        ({"epsilon_after": float("inf")}, "epsilon_after must be a finite number"),
        ({"num_examples": 2.5}, "num_examples must be a whole number"),
    ],
)
def test_ledger_rejects_invalid_entry(path: Path, overrides: dict[str, Any], fragment: str) -> None:
    arguments: dict[str, Any] = {
        "dataset_id": "heart",
        "run_id": "run-1",
        "round": 1,
        "step": S(1.0, 0.01, 10),
        "accountant": "rdp",
        "delta": DELTA,
        "epsilon_after": 0.5,
        "num_examples": 100,
    } | overrides
    with Ledger(path) as ledger:
        with pytest.raises(LedgerError, match=fragment) as caught:
            ledger.record(**arguments)
        assert caught.value.code == "invalid_entry"
        assert ledger.entries() == []
