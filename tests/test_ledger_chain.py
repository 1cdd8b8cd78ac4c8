"""The node ledger's hash chains (schema 5): every row's hash covers its fields and the row
before it, every open verifies both chains, and a row changed outside Lepton FL is refused
by name, by the writer, a reader, `lepton node ledger` (with and without --verify) and
`lepton node start`. Attacks are made as an attacker would: a plain sqlite3 connection that
drops the append-only triggers first."""

from __future__ import annotations

import json
import sqlite3
import struct
import subprocess
import time
from pathlib import Path

import pytest

from client_node.ledger import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    ChainReport,
    Ledger,
    LedgerEntry,
    LedgerError,
    entry_hash,
)
from lepton.cluster import lepton_command
from lepton_fl.privacy import AccountantStep

DATASET = "breast_cancer:site-0-of-3"
OTHER = "heart:b"
ROWS = [  # (dataset, run, round, kind): seq 1..6
    (DATASET, "7", 1, "train"),
    (OTHER, "8", 1, "train"),
    (DATASET, "7", 2, "train"),
    (DATASET, "7", 3, "train"),
    (DATASET, "7", 3, "evaluate"),
    (OTHER, "8", 2, "train"),
]


def _record(ledger: Ledger, dataset: str, run: str, rnd: int, kind: str = "train") -> None:
    train = AccountantStep(1.1 + rnd / 10, 0.02, 50)
    ledger.record(
        dataset_id=dataset,
        run_id=run,
        round=rnd,
        step=train if kind == "train" else AccountantStep(3.0, 1.0, 1),
        accountant="rdp",
        delta=1e-5,
        epsilon_after=0.3 * rnd,
        num_examples=250,
        federation="clinic-fed",
        kind=kind,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A ledger of six charges over two datasets and two run bindings."""
    ledger_path = tmp_path / "state" / "ledger.db"
    with Ledger(ledger_path) as ledger:
        for dataset, run, rnd, kind in ROWS:
            _record(ledger, dataset, run, rnd, kind)
        ledger.bind_run("admin-1", "7", "a" * 64)
        ledger.bind_run("admin-2", "8", "b" * 64)
    return ledger_path


Statement = str | tuple[str, tuple[object, ...]]
# seq, the 13 fields, row_hash (version 5); without row_hash (version 4)
INSERT_V5 = "INSERT INTO ledger_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_V4 = "INSERT INTO ledger_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _attack(path: Path, *statements: Statement) -> None:
    """Change the file as an attacker with write access would: drop the guards, edit."""
    raw = sqlite3.connect(path)
    try:
        for table in ("ledger_entries", "run_bindings"):
            raw.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            raw.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
        for statement in statements:
            sql, params = (statement, ()) if isinstance(statement, str) else statement
            raw.execute(sql, params)
        raw.commit()
    finally:
        raw.close()


def _flip_lowest_bit(value: float) -> float:
    (bits,) = struct.unpack("<q", struct.pack("<d", value))
    (flipped,) = struct.unpack("<d", struct.pack("<q", bits ^ 1))
    return float(flipped)


def _flip_noise_multiplier(path: Path, seq: int) -> None:
    raw = sqlite3.connect(path)
    try:
        (sigma,) = raw.execute(
            "SELECT noise_multiplier FROM ledger_entries WHERE seq = ?", (seq,)
        ).fetchone()
    finally:
        raw.close()
    flipped = _flip_lowest_bit(sigma)
    assert flipped != sigma
    assert abs(flipped - sigma) < 1e-15  # one bit: invisible when printed
    _attack(path, ("UPDATE ledger_entries SET noise_multiplier = ? WHERE seq = ?", (flipped, seq)))


def _refusal(path: Path, *, read_only: bool) -> LedgerError:
    with pytest.raises(LedgerError) as caught:
        Ledger(path, read_only=read_only)
    assert caught.value.code == "tampered"
    return caught.value


def _assert_names_row(message: str, seq: int, dataset: str, run: str, rnd: int, kind: str) -> None:
    assert f"seq {seq} (dataset {dataset!r}, run {run!r}, round {rnd}, {kind})" in message
    assert "Restore the ledger from a backup" in message
    assert "Do not delete it" in message


# -- the chain and its API ----------------------------------------------------------------------


def test_ledger_chain_head_and_verify_cover_every_row(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        assert ledger.head() == ledger.head(DATASET) == GENESIS_HASH
        assert ledger.verify() == ChainReport(
            schema_version=SCHEMA_VERSION,
            chained=True,
            rows=0,
            head=GENESIS_HASH,
            bindings=0,
            bindings_head=GENESIS_HASH,
        )
        heads = []
        for dataset, run, rnd, kind in ROWS:
            _record(ledger, dataset, run, rnd, kind)
            heads.append(ledger.head())
        ledger.bind_run("admin-1", "7", "a" * 64)
        assert ledger.bind_run("admin-1", "9", "a" * 64) == "7"  # no second binding row
        report = ledger.verify()

    assert len(set(heads)) == len(ROWS)  # every row moves the head
    assert (report.rows, report.head, report.bindings) == (len(ROWS), heads[-1], 1)
    assert report.bindings_head not in (None, GENESIS_HASH)
    with Ledger(tmp_path / "ledger.db", read_only=True) as reader:
        assert reader.verify() == report
        assert reader.head() == heads[-1]
        assert reader.head(DATASET) == heads[4]  # its last charge, the evaluation (seq 5)
        assert reader.head(OTHER) == heads[5]
        assert reader.head("never-charged") == GENESIS_HASH


def test_ledger_row_hash_is_the_documented_encoding(path: Path) -> None:
    """An auditor can recompute a row's hash from its fields and the previous hash."""
    raw = sqlite3.connect(path)
    try:
        rows = raw.execute(
            "SELECT seq, dataset_id, run_id, round, noise_multiplier, sample_rate, steps, "
            "accountant, delta, epsilon_after, num_examples, recorded_at, federation, kind, "
            "row_hash FROM ledger_entries ORDER BY seq"
        ).fetchall()
    finally:
        raw.close()
    previous = GENESIS_HASH
    for row in rows:
        entry = LedgerEntry(*row[1:-1])
        assert entry_hash(previous, row[0], entry) == row[-1]
        previous = row[-1]
    with Ledger(path, read_only=True) as reader:
        assert reader.head() == previous


def test_ledger_open_of_10000_rows_verifies_quickly(tmp_path: Path) -> None:
    """The whole chain is verified on every open; 10 000 charges take about 0.1 s."""
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    raw = sqlite3.connect(path)
    previous, rows = GENESIS_HASH, []
    for seq in range(1, 10_001):
        entry = LedgerEntry(
            DATASET, str(seq // 100), seq % 100, 1.1, 0.02, 50, "rdp", 1e-5, 0.5, 250,
            "2026-01-01T00:00:00.000001+00:00", "clinic-fed", "train",
        )  # fmt: skip
        previous = entry_hash(previous, seq, entry)
        rows.append((seq, *(getattr(entry, f) for f in entry.__dataclass_fields__), previous))
    raw.executemany(INSERT_V5, rows)
    raw.commit()
    raw.close()

    for read_only in (False, True):
        started = time.perf_counter()
        with Ledger(path, read_only=read_only) as ledger:
            opened = time.perf_counter() - started
            assert ledger.head() == previous
        assert opened < 3.0, f"opening 10 000 rows took {opened:.2f} s"


# -- tampering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("read_only", [False, True], ids=["writer", "reader"])
def test_ledger_flipped_bit_of_a_noise_multiplier_is_refused_by_name(
    path: Path, read_only: bool
) -> None:
    _flip_noise_multiplier(path, seq=3)

    refusal = _refusal(path, read_only=read_only)

    _assert_names_row(str(refusal), 3, DATASET, "7", 2, "train")


@pytest.mark.parametrize(
    ("attack", "named"),
    [
        pytest.param(  # the next row no longer follows the row before it
            ["DELETE FROM ledger_entries WHERE seq = 3"],
            (4, DATASET, "7", 3, "train"),
            id="deleted-middle-row",
        ),
        pytest.param(  # rows 3 and 4 swap places, each with its own (valid) hash
            [
                "UPDATE ledger_entries SET seq = -3 WHERE seq = 3",
                "UPDATE ledger_entries SET seq = 3 WHERE seq = 4",
                "UPDATE ledger_entries SET seq = 4 WHERE seq = -3",
            ],
            (3, DATASET, "7", 3, "train"),
            id="reordered-rows",
        ),
        pytest.param(  # another round number, hash kept
            ["UPDATE ledger_entries SET round = 9 WHERE seq = 2"],
            (2, OTHER, "8", 9, "train"),
            id="rewritten-middle-row",
        ),
        pytest.param(  # a consistent, smaller charge in the last row, hash not recomputed
            [
                "UPDATE ledger_entries SET noise_multiplier = 50.0, epsilon_after = 0.01 "
                "WHERE seq = 6"
            ],
            (6, OTHER, "8", 2, "train"),
            id="rewritten-last-row",
        ),
        pytest.param(  # a value of another type than the ledger writes
            ["UPDATE ledger_entries SET num_examples = 250.5 WHERE seq = 1"],
            (1, DATASET, "7", 1, "train"),
            id="retyped-value",
        ),
    ],
)
def test_ledger_tampering_is_refused_naming_the_row(
    path: Path, attack: list[str], named: tuple[int, str, str, int, str]
) -> None:
    _attack(path, *attack)

    for read_only in (False, True):
        _assert_names_row(str(_refusal(path, read_only=read_only)), *named)


def test_ledger_deleted_middle_row_names_the_gap(path: Path) -> None:
    _attack(path, "DELETE FROM ledger_entries WHERE seq = 3")

    assert "rows 3..3 before it are missing" in str(_refusal(path, read_only=True))


def test_ledger_deleted_last_rows_are_refused(path: Path) -> None:
    _attack(path, "DELETE FROM ledger_entries WHERE seq >= 5")

    message = str(_refusal(path, read_only=False))
    assert "end at seq 4, but SQLite had recorded up to seq 6" in message
    assert "Restore the ledger from a backup" in message


def test_ledger_changed_run_binding_is_refused(path: Path) -> None:
    _attack(path, "UPDATE run_bindings SET flower_run_id = '99' WHERE admin_run_id = 'admin-1'")

    message = str(_refusal(path, read_only=True))
    assert "the run binding seq 1 (admin run 'admin-1', Flower run '99')" in message


def test_ledger_consistent_rewrite_of_the_whole_chain_is_not_detectable_locally(
    path: Path,
) -> None:
    """Documented limit: the hashes are not keyed, so an attacker who recomputes every hash
    from the changed row on passes the local check. Only the head differs: the coordinator,
    which saw the earlier heads, is what catches it."""
    with Ledger(path, read_only=True) as reader:
        honest_head = reader.head()
        entries = reader.entries()
    raw = sqlite3.connect(path)
    seqs = [row[0] for row in raw.execute("SELECT seq FROM ledger_entries ORDER BY seq")]
    raw.close()
    forged = [entries[0], LedgerEntry(**{**entries[1].__dict__, "noise_multiplier": 50.0})]
    forged += entries[2:]
    previous, statements = GENESIS_HASH, list[Statement]()
    for seq, entry in zip(seqs, forged, strict=True):
        previous = entry_hash(previous, seq, entry)
        statements.append(
            (
                "UPDATE ledger_entries SET noise_multiplier = ?, row_hash = ? WHERE seq = ?",
                (entry.noise_multiplier, previous, seq),
            )
        )
    _attack(path, *statements)

    with Ledger(path, read_only=True) as reader:
        assert reader.verify().rows == len(ROWS)
        assert reader.head() != honest_head


def test_ledger_writer_refuses_to_append_after_the_file_changed_under_it(path: Path) -> None:
    with Ledger(path) as ledger:
        _attack(path, "DELETE FROM ledger_entries WHERE seq = 6")  # and hides it from open
        with pytest.raises(LedgerError) as caught:
            _record(ledger, DATASET, "9", 1)
        assert caught.value.code == "tampered"
        assert "while this trainer had it open" in str(caught.value)
        assert len(ledger.entries()) == len(ROWS) - 1  # nothing appended


# -- the command line ----------------------------------------------------------------------------


def _node_toml(tmp_path: Path) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nname = "clinic"\nstate_dir = "{tmp_path / "state"}"\n\n'
        '[data]\ntask = "breast_cancer"\npartition = "site-0-of-3"\n\n'
        '[privacy]\nepsilon_budget = 10.0\nfederations = ["clinic-fed"]\n\n'
        f'[superlink]\naddress = "127.0.0.1:1"\nroot_certificates = "{tmp_path / "ca.pem"}"\n\n'
        f'[auth]\nprivate_key = "{tmp_path / "key"}"\n'
    )
    (tmp_path / "ca.pem").write_text("unused here")
    (tmp_path / "key").write_text("unused here")
    return config


def _lepton(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lepton_command(*args), capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_node_ledger_verify_prints_rows_and_head(path: Path, tmp_path: Path) -> None:
    config = _node_toml(tmp_path)
    with Ledger(path, read_only=True) as reader:
        head = reader.head()

    done = _lepton("node", "ledger", "--config", str(config), "--verify")
    as_json = _lepton("node", "ledger", "--config", str(config), "--verify", "--json")

    assert done.returncode == 0, done.stderr
    assert f"verified: {len(ROWS)} charges and 2 run bindings" in done.stdout
    assert f"head {head}" in done.stdout
    report = json.loads(as_json.stdout)
    assert (report["rows"], report["head"], report["chained"]) == (len(ROWS), head, True)


def test_cli_node_ledger_export_is_the_reconcile_request_body(path: Path, tmp_path: Path) -> None:
    """What a site hands its tenant admin is exactly what the reconcile endpoint takes."""
    from coordinator.api.schemas import ReconcileIn

    config = _node_toml(tmp_path)
    out = tmp_path / "reconcile.json"

    done = _lepton("node", "ledger", "--config", str(config), "--export", str(out))
    to_stdout = _lepton("node", "ledger", "--config", str(config), "--export", "-")

    assert done.returncode == 0, done.stderr
    assert json.loads(to_stdout.stdout) == json.loads(out.read_text())
    body = ReconcileIn.model_validate_json(out.read_text())  # strict: no unknown fields
    assert len(body.entries) == len(ROWS)
    assert all(row.epsilon_after is not None and row.delta for row in body.entries)


@pytest.mark.parametrize(
    "flags", [[], ["--verify"], ["--export", "-"]], ids=["report", "verify", "export"]
)
def test_cli_node_ledger_refuses_a_tampered_ledger_by_name(
    path: Path, tmp_path: Path, flags: list[str]
) -> None:
    config = _node_toml(tmp_path)
    _flip_noise_multiplier(path, seq=3)

    done = _lepton("node", "ledger", "--config", str(config), *flags)

    assert done.returncode == 2, done.stdout
    assert "Traceback" not in done.stderr
    assert "error [tampered]" in done.stderr
    _assert_names_row(done.stderr, 3, DATASET, "7", 2, "train")
    assert done.stdout == ""  # no report of a ledger that cannot be trusted


def test_cli_node_start_stops_on_a_tampered_ledger(path: Path, tmp_path: Path) -> None:
    config = _node_toml(tmp_path)
    _flip_noise_multiplier(path, seq=3)

    done = _lepton("node", "start", "--config", str(config))

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "error [tampered]" in done.stderr
    _assert_names_row(done.stderr, 3, DATASET, "7", 2, "train")


# -- migration: version 4 -> 5 -------------------------------------------------------------------

V4_SCHEMA = """
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
    federation TEXT CHECK (federation IS NULL OR length(federation) > 0),
    kind TEXT NOT NULL DEFAULT 'train' CHECK (kind IN ('train', 'evaluate')),
    UNIQUE (dataset_id, run_id, round, kind)
);
CREATE INDEX ix_ledger_entries_dataset ON ledger_entries (dataset_id, seq);
CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'privacy ledger entries are append-only'); END;
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'privacy ledger entries are append-only'); END;
CREATE TABLE run_bindings (
    admin_run_id TEXT PRIMARY KEY CHECK (length(admin_run_id) > 0),
    flower_run_id TEXT NOT NULL CHECK (length(flower_run_id) > 0),
    authorization_sha256 TEXT NOT NULL CHECK (length(authorization_sha256) = 64),
    bound_at TEXT NOT NULL
);
CREATE TRIGGER run_bindings_no_update BEFORE UPDATE ON run_bindings
BEGIN SELECT RAISE(ABORT, 'run bindings are append-only'); END;
CREATE TRIGGER run_bindings_no_delete BEFORE DELETE ON run_bindings
BEGIN SELECT RAISE(ABORT, 'run bindings are append-only'); END;
"""
V4_ROWS = [  # seq 1, 2, 4: a gap is kept as it is
    (1, "heart:a", "7", 1, 1.1, 0.02, 50, "rdp", 1e-5, 0.4, 250, "2026-01-01T00:00:00+00:00",
     "heart", "train"),
    (2, "heart:a", "7", 1, 3.0, 1.0, 1, "rdp", 1e-5, 0.5, 60, "2026-01-01T00:01:00+00:00",
     "heart", "evaluate"),
    (4, "cancer:b", "8", 1, 0.9, 0.05, 7, "prv", 1e-6, 0.2, 90, "2026-01-02T00:00:00+00:00",
     None, "train"),
]  # fmt: skip


def _v4_ledger(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(path)
    raw.executescript(V4_SCHEMA)
    raw.executemany(INSERT_V4, V4_ROWS)
    raw.execute("INSERT INTO run_bindings VALUES ('admin-2', '8', ?, 'then')", ("b" * 64,))
    raw.execute("INSERT INTO run_bindings VALUES ('admin-1', '7', ?, 'later')", ("a" * 64,))
    raw.execute("PRAGMA user_version = 4")
    raw.commit()
    raw.close()


def _stored(entry: LedgerEntry) -> tuple[object, ...]:
    return tuple(getattr(entry, name) for name in entry.__dataclass_fields__)


def test_ledger_reader_reads_a_version_4_ledger_without_verifying_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "ledger.db"
    _v4_ledger(path)

    with Ledger(path, read_only=True) as reader:
        assert [_stored(e) for e in reader.entries()] == [row[1:] for row in V4_ROWS]
        report = reader.verify()
        with pytest.raises(LedgerError) as caught:
            reader.head()
    assert report == ChainReport(
        schema_version=4, chained=False, rows=3, head=None, bindings=2, bindings_head=None
    )
    assert caught.value.code == "not_chained"
    done = _lepton("node", "ledger", "--config", str(_node_toml(tmp_path)), "--verify")
    assert done.returncode == 1
    assert "schema version 4, older than hash chains" in done.stderr
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 4  # left as it was
    raw.close()


def test_ledger_writer_chains_a_version_4_ledger_keeping_every_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    _v4_ledger(path)

    with Ledger(path) as ledger:
        report = ledger.verify()
        assert [_stored(e) for e in ledger.entries()] == [row[1:] for row in V4_ROWS]
        assert ledger.bind_run("admin-1", "99", "a" * 64) == "7"  # bindings kept
        _record(ledger, "heart:a", "7", 2)
    assert (report.schema_version, report.rows, report.bindings) == (5, 3, 2)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [r[0] for r in raw.execute("SELECT seq FROM ledger_entries ORDER BY seq")] == [
            1, 2, 4, 5,
        ]  # fmt: skip
        bound = raw.execute("SELECT seq, admin_run_id FROM run_bindings ORDER BY seq").fetchall()
        assert bound == [(1, "admin-2"), (2, "admin-1")]  # insertion order
        for statement in ("UPDATE ledger_entries SET round = 5", "DELETE FROM run_bindings"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                raw.execute(statement)
    finally:
        raw.close()
    with Ledger(path, read_only=True) as reader:
        assert reader.verify().rows == 4


# -- a ledger that cannot be written ---------------------------------------------------------------


def test_ledger_full_database_fails_the_write_with_its_cause(path: Path) -> None:
    """SQLite's own "database or disk is full" (SQLITE_FULL), from a page limit on the
    writer's connection; the chain stays whole and the next open verifies it."""
    with Ledger(path) as ledger:
        recorded, error = fill_until_full(ledger)
        head = ledger.head()

    assert error.code == "write_failed"
    assert "(database or disk is full); nothing was recorded" in str(error)
    with Ledger(path, read_only=True) as reader:
        assert reader.verify().rows == len(ROWS) + recorded
        assert reader.head() == head


def fill_until_full(ledger: Ledger) -> tuple[int, LedgerError]:
    """Cap the writer's connection at its current page count (``PRAGMA max_page_count``),
    then record small charges of another dataset until SQLite answers SQLITE_FULL; return
    how many were recorded and the error. Any larger charge no longer fits either."""
    conn = ledger._conn
    assert conn is not None
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    conn.execute(f"PRAGMA max_page_count = {pages}")
    for recorded in range(1000):
        try:
            _record(ledger, "x", "f", recorded + 1)
        except LedgerError as err:
            return recorded, err
    raise AssertionError("1000 charges fitted in the capped ledger")


def test_ledger_commitments_bind_each_row_without_revealing_it(path: Path) -> None:
    """What a node reports of each charge: an HMAC of the row hash under the node's own key.
    Without the key nothing is committed (a reader gets None); a rewritten row no longer
    gives the reported value; the key file is the node's secret (0600)."""
    key_path = path.with_name(path.name + ".report-key")
    with Ledger(path, read_only=True) as reader:
        assert reader.commitment(reader.head()) is None  # no key yet: nothing to commit
        assert reader.row_commitments() == {}
    with Ledger(path) as writer:
        head = writer.head()
        reported = writer.commitment(head)
    assert reported is not None
    assert reported != head  # not the row hash itself: that covers the example count
    assert key_path.stat().st_mode & 0o777 == 0o600
    with Ledger(path, read_only=True) as reader:
        before = reader.row_commitments()
    assert before[(OTHER, "8", 2, "train")] == reported  # the last row is the head

    with Ledger(path, read_only=True) as reader:
        entries = reader.entries()
    previous, statements = GENESIS_HASH, list[Statement]()
    for seq, entry in enumerate(entries, start=1):  # seq 4 made cheaper, the chain recomputed
        if seq == 4:
            entry = LedgerEntry(**{**entry.__dict__, "noise_multiplier": 50.0})
        previous = entry_hash(previous, seq, entry)
        statements.append(
            (
                "UPDATE ledger_entries SET noise_multiplier = ?, row_hash = ? WHERE seq = ?",
                (entry.noise_multiplier, previous, seq),
            )
        )
    _attack(path, *statements)
    with Ledger(path, read_only=True) as reader:
        reader.verify()  # consistent: the node alone cannot tell
        after = reader.row_commitments()

    keys = [(d, r, n, k) for d, r, n, k in ROWS]
    assert [before[k] == after[k] for k in keys] == [True, True, True, False, False, False]
