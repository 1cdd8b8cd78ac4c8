"""Ledger schema migrations: 1 -> 2 (charges learn their federation), 2 -> 3 (run
bindings), 3 -> 4 (charge kinds), each on to 5 (hash chains, also tests/test_ledger_chain.py);
an older file loses nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from client_node.ledger import SCHEMA_VERSION, Ledger, LedgerError
from lepton_fl.privacy import AccountantStep, epsilon_spent

# The version-1 schema exactly as Lepton FL wrote it before federations were recorded.
V1_SCHEMA = """
CREATE TABLE ledger_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset_id TEXT NOT NULL CHECK (length(dataset_id) > 0),
    run_id TEXT NOT NULL CHECK (length(run_id) > 0),
    round INTEGER NOT NULL CHECK (round >= 0),
    noise_multiplier REAL NOT NULL CHECK (noise_multiplier > 0),
    sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    steps INTEGER NOT NULL CHECK (steps >= 0),
    accountant TEXT NOT NULL CHECK (accountant IN ('rdp', 'prv')),
    delta REAL NOT NULL CHECK (delta > 0 AND delta < 1),
    epsilon_after REAL NOT NULL CHECK (epsilon_after >= 0),
    num_examples INTEGER NOT NULL CHECK (num_examples >= 0),
    recorded_at TEXT NOT NULL,
    UNIQUE (dataset_id, run_id, round)
);
CREATE INDEX ix_ledger_entries_dataset ON ledger_entries (dataset_id, seq);
CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'privacy ledger entries are append-only'); END;
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'privacy ledger entries are append-only'); END;
"""
V1_ROWS = [
    ("heart:a", "7", 1, 1.1, 0.02, 50, "rdp", 1e-5, 0.4, 250, "2026-01-01T00:00:00.000001+00:00"),
    ("heart:a", "7", 2, 1.1, 0.02, 50, "rdp", 1e-5, 0.6, 250, "2026-01-01T00:01:00.000001+00:00"),
    ("cancer:b", "8", 1, 0.9, 0.05, 7, "prv", 1e-6, 0.2, 90, "2026-01-02T00:00:00.000001+00:00"),
]


def _v1_ledger(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(path)
    raw.executescript(V1_SCHEMA)
    raw.executemany(
        "INSERT INTO ledger_entries (dataset_id, run_id, round, noise_multiplier, sample_rate, "
        "steps, accountant, delta, epsilon_after, num_examples, recorded_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        V1_ROWS,
    )
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()


def _version(path: Path) -> int:
    raw = sqlite3.connect(path)
    try:
        return int(raw.execute("PRAGMA user_version").fetchone()[0])
    finally:
        raw.close()


def _fields(entry: object) -> tuple[object, ...]:
    return tuple(getattr(entry, name) for name in (
        "dataset_id", "run_id", "round", "noise_multiplier", "sample_rate", "steps",
        "accountant", "delta", "epsilon_after", "num_examples", "recorded_at",
    ))  # fmt: skip


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "node" / "ledger.db"


def test_writer_migrates_a_version_1_ledger_and_loses_nothing(path: Path) -> None:
    _v1_ledger(path)
    history_before = [AccountantStep(r[3], r[4], r[5]) for r in V1_ROWS if r[0] == "heart:a"]

    with Ledger(path) as ledger:
        entries = ledger.entries()
        assert [_fields(e) for e in entries] == V1_ROWS
        assert [e.federation for e in entries] == [None, None, None]
        assert ledger.history("heart:a") == history_before
        assert ledger.entry_for("heart:a", "7", 2) is not None
        ledger.record(
            dataset_id="heart:a",
            run_id="9",
            round=1,
            step=AccountantStep(1.0, 0.02, 50),
            accountant="rdp",
            delta=1e-5,
            epsilon_after=0.9,
            num_examples=250,
            federation="heart-fed",
        )

    assert _version(path) == SCHEMA_VERSION == 5
    with Ledger(path, read_only=True) as reader:
        after = reader.entries("heart:a")
        assert (reader.verify().rows, reader.verify().bindings) == (4, 0)  # chained, in order
    assert [_fields(e) for e in after[:2]] == V1_ROWS[:2]
    assert [e.federation for e in after] == [None, None, "heart-fed"]
    composed = epsilon_spent([e.step for e in after], delta=1e-5, accountant="rdp")
    assert composed > epsilon_spent(history_before, delta=1e-5, accountant="rdp")


def test_migrated_ledger_stays_append_only(path: Path) -> None:
    _v1_ledger(path)
    Ledger(path).close()
    raw = sqlite3.connect(path)
    for statement in (
        "UPDATE ledger_entries SET federation = 'x'",
        "DELETE FROM ledger_entries",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute(statement)
    raw.close()
    with Ledger(path, read_only=True) as reader:
        assert len(reader.entries()) == len(V1_ROWS)


def test_reader_reads_a_version_1_ledger_without_changing_it(path: Path) -> None:
    _v1_ledger(path)

    with Ledger(path, read_only=True) as reader:
        entries = reader.entries()

    assert [_fields(e) for e in entries] == V1_ROWS
    assert all(e.federation is None for e in entries)
    assert _version(path) == 1


def test_migration_is_idempotent_across_restarts(path: Path) -> None:
    _v1_ledger(path)
    Ledger(path).close()
    with Ledger(path) as again:
        assert [_fields(e) for e in again.entries()] == V1_ROWS
    assert _version(path) == SCHEMA_VERSION


def test_a_new_ledger_refuses_an_empty_federation_name(path: Path) -> None:
    with Ledger(path) as ledger, pytest.raises(LedgerError) as caught:
        ledger.record(
            dataset_id="d",
            run_id="1",
            round=1,
            step=AccountantStep(1.0, 0.1, 3),
            accountant="rdp",
            delta=1e-5,
            epsilon_after=0.1,
            num_examples=10,
            federation="",
        )
    assert caught.value.code == "invalid_entry"
    assert "federation" in str(caught.value)


# -- schema 2 -> 3: run bindings (the first Flower run of each signed run authorization) ---


def _v2_ledger(path: Path) -> None:
    _v1_ledger(path)
    raw = sqlite3.connect(path)
    raw.execute(
        "ALTER TABLE ledger_entries ADD COLUMN federation TEXT "
        "CHECK (federation IS NULL OR length(federation) > 0)"
    )
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()


def test_writer_migrates_a_version_2_ledger_and_binds_runs(path: Path) -> None:
    _v2_ledger(path)
    with Ledger(path, read_only=True) as reader:  # a reader leaves version 2 as it is
        assert [_fields(e) for e in reader.entries()] == V1_ROWS
    assert _version(path) == 2

    with Ledger(path) as ledger:
        assert [_fields(e) for e in ledger.entries()] == V1_ROWS
        assert ledger.bind_run("admin-1", "41", "a" * 64) == "41"
        assert ledger.bind_run("admin-1", "42", "a" * 64) == "41"  # the first run stays
    assert _version(path) == SCHEMA_VERSION == 5
    with Ledger(path) as restarted:
        assert restarted.bind_run("admin-1", "42", "a" * 64) == "41"
        assert restarted.bind_run("admin-2", "42", "b" * 64) == "42"


def test_run_bindings_are_append_only(path: Path) -> None:
    with Ledger(path) as ledger:
        ledger.bind_run("admin-1", "41", "a" * 64)
    raw = sqlite3.connect(path)
    try:
        for statement in (
            "UPDATE run_bindings SET flower_run_id = '42'",
            "DELETE FROM run_bindings",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                raw.execute(statement)
    finally:
        raw.close()


# -- schema 3 -> 4: charges learn their kind (a DP-SGD round or an evaluation release) ------


def _v3_ledger(path: Path) -> None:
    _v2_ledger(path)
    raw = sqlite3.connect(path)
    raw.executescript(
        "CREATE TABLE run_bindings (admin_run_id TEXT PRIMARY KEY, flower_run_id TEXT NOT "
        "NULL, authorization_sha256 TEXT NOT NULL, bound_at TEXT NOT NULL);"
        "INSERT INTO run_bindings VALUES ('admin-1', '41', '" + "a" * 64 + "', 'then');"
    )
    raw.execute("PRAGMA user_version = 3")
    raw.commit()
    raw.close()


def test_writer_migrates_a_version_3_ledger_keeping_every_charge_as_training(path: Path) -> None:
    _v3_ledger(path)
    with Ledger(path, read_only=True) as reader:  # a reader leaves version 3 as it is
        assert [_fields(e) for e in reader.entries()] == V1_ROWS
        assert {e.kind for e in reader.entries()} == {"train"}
    assert _version(path) == 3

    with Ledger(path) as ledger:
        assert [_fields(e) for e in ledger.entries()] == V1_ROWS
        assert {e.kind for e in ledger.entries()} == {"train"}
        assert ledger.bind_run("admin-1", "42", "a" * 64) == "41"  # bindings kept
        # an evaluation release of a trained round is a second charge of its own kind
        ledger.record(
            dataset_id="heart:a",
            run_id="7",
            round=2,
            step=AccountantStep(3.0, 1.0, 1),
            accountant="rdp",
            delta=1e-5,
            epsilon_after=0.7,
            num_examples=60,
            federation="heart",
            kind="evaluate",
        )
        with pytest.raises(LedgerError) as err:  # ... and still only one per round and kind
            ledger.record(
                dataset_id="heart:a",
                run_id="7",
                round=2,
                step=AccountantStep(1.1, 0.02, 50),
                accountant="rdp",
                delta=1e-5,
                epsilon_after=0.8,
                num_examples=250,
            )
        assert err.value.code == "duplicate_round"
        assert ledger.entry_for("heart:a", "7", 2, kind="evaluate") is not None
        assert [e.kind for e in ledger.entries("heart:a")] == ["train", "train", "evaluate"]
    assert _version(path) == SCHEMA_VERSION == 5
    raw = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("DELETE FROM ledger_entries")
    finally:
        raw.close()
