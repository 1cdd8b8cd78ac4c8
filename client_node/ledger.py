"""The node's persistent privacy ledger: every DP-SGD charge, per local dataset.

One SQLite file (WAL mode, ``synchronous=FULL``) holds an append-only table of charges.
The accountant history of a dataset is the list of its charges in insertion order; it
composes across all runs and survives restarts, and nothing in this module deletes or
rewrites an entry (triggers refuse UPDATE and DELETE).

Concurrency: one writer process (the trainer) holds an exclusive lock on
``<ledger>.lock`` while open; any number of reader processes may open the same file
with ``read_only=True`` (or plain ``sqlite3`` with ``mode=ro``) at the same time.
Within a process a :class:`Ledger` may be shared between threads.

The schema version is SQLite's ``PRAGMA user_version``; a file written by a newer
schema is refused rather than guessed at. Version 2 records the federation of each charge
(so a site can cap epsilon per federation); a writer migrates a version-1 file in place by
adding the column, keeping every entry (their federation is unknown: NULL). A read-only
opener reads a version-1 file as it is, without migrating it. Version 3 adds the run
bindings (``run_bindings``, also append-only): which Flower run first presented each
admin-signed run authorization, so that a replay under another Flower run is refused even
after a restart. Version 4 marks each charge's ``kind``: ``"train"`` (a DP-SGD round) or
``"evaluate"`` (the DP release of a scheduled evaluation, keyed by the same run and round);
a round has at most one charge of each kind. A read-only opener reads older files as they
are.

Version 5 makes both tables tamper-evident: every row carries ``row_hash``, the SHA-256 of
the compact JSON list of a tag, the previous row's hash, the row's ``seq`` and all its
recorded fields in column order (floats as ``float.hex``, so a flipped bit changes it; see
:func:`entry_hash` and :func:`binding_hash`), the first row chaining to
:data:`GENESIS_HASH`. Charges and run bindings are two chains, told apart by their tags.
The writer also checks, at each append, that the last row is still the one it verified or
wrote. A writer migrates a version-1 to -4 file in place: it rebuilds
both tables (the triggers forbid UPDATE), keeping every row in its order and computing the
chain over them (older charges as ``"train"``; run bindings in insertion order).

Every open verifies both whole chains (writer and reader; about 0.1 s per 10 000 charges)
and refuses a row whose hash does not match with :class:`LedgerError` code ``tampered``,
naming the row; so does :meth:`Ledger.verify`, which reports the rows checked and the
heads (:class:`ChainReport`). It is never skipped: a damaged row stops the node until the
ledger is restored from a backup. What this catches: an edited field of any row, a deleted
or reordered row in the middle, an edited last row whose hash was not recomputed, and
(from SQLite's own ``sqlite_sequence``) deleted last rows. What it cannot catch locally: a
rewrite that recomputes every later hash, or a deleted last row with ``sqlite_sequence``
edited to match: the hashes are not keyed, so whoever can write the file can rebuild a
consistent chain. The chain head (:meth:`Ledger.head`), once reported to the coordinator,
is what exposes such a rewrite: a rebuilt chain no longer passes through the heads the
coordinator saw. A read-only opener of a file older than version 5 cannot verify what
has no hashes: it reads the file as it is and reports it as not chained
(``ChainReport.chained`` is False); the trainer chains it when it next opens it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import numbers
import secrets
import sqlite3
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from lepton_fl.files import write_file
from lepton_fl.privacy.accounting import AccountantStep, PrivacyAccountingError

SCHEMA_VERSION = 5
GENESIS_HASH = "0" * 64
"""The previous hash of each chain's first row (and the head of an empty chain)."""
_ENTRY_TAG = "lepton-fl/ledger-entry/v5"
_BINDING_TAG = "lepton-fl/run-binding/v5"
_BUSY_TIMEOUT_S = 10.0
_TABLE = "ledger_entries"
_COLUMNS = (
    "dataset_id, run_id, round, noise_multiplier, sample_rate, steps, accountant, delta, "
    "epsilon_after, num_examples, recorded_at, federation, kind"
)
_COLUMNS_V3 = _COLUMNS.removesuffix(", kind")
_COLUMNS_V1 = _COLUMNS_V3.removesuffix(", federation")
KINDS = ("train", "evaluate")
_FEDERATION_COLUMN = "federation TEXT CHECK (federation IS NULL OR length(federation) > 0)"
_HASH_COLUMN = "row_hash TEXT NOT NULL CHECK (length(row_hash) = 64)"
_APPEND_ONLY = """
CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, '{what} are append-only'); END;
CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, '{what} are append-only'); END;
"""
_SCHEMA = f"""
CREATE TABLE {_TABLE} (
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
    {_FEDERATION_COLUMN},
    kind TEXT NOT NULL DEFAULT 'train' CHECK (kind IN ('train', 'evaluate')),
    {_HASH_COLUMN},
    UNIQUE (dataset_id, run_id, round, kind)
);
CREATE INDEX ix_{_TABLE}_dataset ON {_TABLE} (dataset_id, seq);
""" + _APPEND_ONLY.format(table=_TABLE, what="privacy ledger entries")
_BINDINGS = "run_bindings"
_BINDING_COLUMNS = "admin_run_id, flower_run_id, authorization_sha256, bound_at"
_BINDINGS_SCHEMA = f"""
CREATE TABLE {_BINDINGS} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    admin_run_id TEXT NOT NULL UNIQUE CHECK (length(admin_run_id) > 0),
    flower_run_id TEXT NOT NULL CHECK (length(flower_run_id) > 0),
    authorization_sha256 TEXT NOT NULL CHECK (length(authorization_sha256) = 64),
    bound_at TEXT NOT NULL,
    {_HASH_COLUMN}
);
""" + _APPEND_ONLY.format(table=_BINDINGS, what="run bindings")
# Version 3 and 4 bindings, as the 2 -> 3 step creates them (rebuilt into version 5 next).
_BINDINGS_SCHEMA_V3 = f"""
CREATE TABLE {_BINDINGS} (
    admin_run_id TEXT PRIMARY KEY CHECK (length(admin_run_id) > 0),
    flower_run_id TEXT NOT NULL CHECK (length(flower_run_id) > 0),
    authorization_sha256 TEXT NOT NULL CHECK (length(authorization_sha256) = 64),
    bound_at TEXT NOT NULL
);
"""
_NOT_DELETE = (
    "Do not delete it: it is this node's record of the privacy it has spent, and a new "
    "ledger would forget that spending."
)
_RESTORE = (
    "Restore the ledger from a backup taken before the change, and find out who wrote to it "
    "outside Lepton FL; the node refuses to run on it until then."
)


class LedgerError(RuntimeError):
    """The ledger could not be opened, read or written; ``code`` says which case.

    Codes: ``path_is_directory``, ``unwritable``, ``missing``, ``unreadable``,
    ``corrupt``, ``not_a_ledger``, ``schema_too_new``, ``locked_by_other_writer``,
    ``read_only``, ``closed``, ``invalid_entry``, ``duplicate_round``, ``write_failed``,
    ``read_failed``, ``tampered`` (a row does not match its hash chain),
    ``not_chained`` (a file older than schema 5, opened read-only, has no chain head).
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_rebuild_error, (type(self), str(self), self.code))


def _rebuild_error(cls: type[LedgerError], message: str, code: str) -> LedgerError:
    return cls(message, code=code)


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded charge on one dataset, as the node accounted it: a round of DP-SGD
    (``kind == "train"``) or the DP release of a scheduled evaluation (``"evaluate"``)."""

    dataset_id: str
    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    delta: float
    epsilon_after: float  # the dataset's epsilon after this round, as computed then
    num_examples: int
    recorded_at: str  # ISO-8601, UTC
    federation: str | None = None  # None: recorded before ledgers named the federation
    kind: str = "train"  # "train" or "evaluate"

    @property
    def step(self) -> AccountantStep:
        """This charge as an Opacus accountant history entry."""
        return AccountantStep(self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class ChainReport:
    """What :meth:`Ledger.verify` checked: both hash chains, whole, in ``seq`` order.

    ``chained`` is False only for a file older than schema 5 opened read-only: it has no
    hashes, so nothing was verified, ``rows``/``bindings`` only count its rows and the heads
    are None. Otherwise every row matched (a row that does not raises ``tampered``).
    """

    schema_version: int
    chained: bool
    rows: int  # charges (ledger_entries rows) checked
    head: str | None  # hash of the last charge; GENESIS_HASH when there is none
    bindings: int  # run bindings checked
    bindings_head: str | None  # hash of the last run binding; GENESIS_HASH when none


@dataclass(frozen=True)
class _Link:
    """The last row of a chain as the writer last verified or wrote it."""

    seq: int
    row_hash: str


_START = _Link(0, GENESIS_HASH)


class Ledger:
    """A node's persistent, append-only, hash-chained ledger of privacy charges per dataset."""

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        """Open (and, unless ``read_only``, create) the ledger at ``path``; verify its chains.

        A writer creates the parent directory and the schema (migrating an older file),
        switches the file to WAL mode and takes an exclusive lock on ``<path>.lock`` for as
        long as it is open. A reader (``read_only=True``) needs an existing ledger and never
        writes. Both verify every row's hash before returning.

        Raises:
            LedgerError: the path is a directory, cannot be created or read, is not a
                ledger, is corrupt, was written by a newer schema, is already open for
                writing by another process, or (``tampered``) a row does not match its hash.
        """
        self.path = Path(path)
        self.read_only = read_only
        self._mutex = threading.Lock()
        self._lock_file: IO[bytes] | None = None
        self._conn: sqlite3.Connection | None = None
        self._select_columns = _COLUMNS
        self._version = SCHEMA_VERSION
        self._entries_link = _START  # the writer's view of each chain's last row
        self._bindings_link = _START
        if self.path.is_dir():
            raise LedgerError(
                f"The ledger path {self.path} is a directory; give the path of a file "
                f"inside it, for example {self.path / 'ledger.sqlite3'}.",
                code="path_is_directory",
            )
        try:
            self._conn = self._open_reader() if read_only else self._open_writer()
            self._check_schema(self._conn)
            self._verify(self._conn)
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------

    def _open_writer(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"Cannot create the directory {self.path.parent} for the ledger ({exc}); "
                "create it or give a ledger path that this node's user can write.",
                code="unwritable",
            ) from exc
        self._lock_file = _acquire_writer_lock(self.path)
        conn = self._connect(str(self.path), uri=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(
                    f"Cannot switch the ledger {self.path} to WAL mode (SQLite kept "
                    f"{mode!r}); put the ledger on a local file system.",
                    code="unwritable",
                )
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            conn.close()
            raise self._open_error(exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise LedgerError(
                f"There is no ledger at {self.path}; check the path (a node creates its "
                "ledger when its trainer first starts).",
                code="missing",
            )
        return self._connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)

    def _connect(self, target: str, *, uri: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                target,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,  # shared between threads under self._mutex
                uri=uri,
            )
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise self._open_error(exc) from exc
        if result is None or result[0] != "ok":
            conn.close()
            raise LedgerError(
                f"The ledger {self.path} failed SQLite's integrity check ({result}). "
                f"Restore it from a backup. {_NOT_DELETE}",
                code="corrupt",
            )
        return conn

    def _open_error(self, exc: sqlite3.Error) -> LedgerError:
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            return LedgerError(
                f"The ledger {self.path} is not a readable SQLite database ({exc}). Restore "
                f"it from a backup, or check that the path points at the ledger. {_NOT_DELETE}",
                code="corrupt",
            )
        return LedgerError(
            f"Cannot open the ledger {self.path} ({exc}); check that the file and its "
            "directory exist and that this node's user may read (and, for the trainer, "
            "write) them.",
            code="unreadable",
        )

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"The ledger {self.path} has schema version {version}, written by a "
                    f"newer Lepton FL; this one understands up to version {SCHEMA_VERSION}. "
                    "Upgrade lepton-fl on this node before opening it.",
                    code="schema_too_new",
                )
            if version == SCHEMA_VERSION:
                return
            if self.read_only and version > 0:  # read as it is; the writer migrates it
                self._version = version
                self._select_columns = {
                    1: f"{_COLUMNS_V1}, NULL, 'train'",
                    2: f"{_COLUMNS_V3}, 'train'",
                    3: f"{_COLUMNS_V3}, 'train'",  # every charge before v4 is training
                }.get(version, _COLUMNS)
                return
            if version == 0 and self.read_only:
                raise LedgerError(
                    f"The file {self.path} is not a Lepton FL ledger (it has no ledger "
                    "schema); check the path.",
                    code="not_a_ledger",
                )
            with _transaction(conn):
                self._create_schema(conn)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version == SCHEMA_VERSION:  # another writer got there first
            return
        if version == 1:
            self._migrate_v1(conn)
            version = 2
        if version == 2:
            self._migrate_v2(conn)
            version = 3
        if version in (3, 4):
            self._migrate_to_chained(conn, version)
            return
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'"
            ).fetchall()
        ]
        if version != 0 or tables:
            raise LedgerError(
                f"The file {self.path} is an SQLite database but not a Lepton FL ledger "
                f"(schema version {version}, objects {sorted(tables)}); give the ledger "
                "a path of its own.",
                code="not_a_ledger",
            )
        _execute_script(conn, _SCHEMA + _BINDINGS_SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate_v1(self, conn: sqlite3.Connection) -> None:
        """Version 1 -> 2: add the federation column; every entry stays as it was."""
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({_TABLE})").fetchall()}
        if "dataset_id" not in columns:
            raise LedgerError(
                f"The file {self.path} says it is a version-1 ledger but has no "
                f"{_TABLE} table; restore it from a backup. {_NOT_DELETE}",
                code="corrupt",
            )
        if "federation" not in columns:
            conn.execute(f"ALTER TABLE {_TABLE} ADD COLUMN {_FEDERATION_COLUMN}")
        conn.execute("PRAGMA user_version = 2")

    def _migrate_v2(self, conn: sqlite3.Connection) -> None:
        """Version 2 -> 3: add the run bindings table; every charge stays as it was."""
        exists = conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (_BINDINGS,)
        ).fetchone()
        if exists is None:
            _execute_script(conn, _BINDINGS_SCHEMA_V3)
        conn.execute("PRAGMA user_version = 3")

    def _migrate_to_chained(self, conn: sqlite3.Connection, version: int) -> None:
        """Version 3 or 4 -> 5: rebuild both tables with their hash chains, in this
        transaction (the triggers refuse UPDATE, and SQLite cannot change a UNIQUE constraint
        in place). Every charge is copied with its ``seq`` (order kept; version 3's as
        ``"train"``, the v3 -> v4 step) and every run binding in insertion order, each with
        its hash; then the old tables are dropped (dropping fires no DELETE trigger)."""
        old_entries, old_bindings = f"{_TABLE}_v{version}", f"{_BINDINGS}_v{version}"
        conn.execute(f"ALTER TABLE {_TABLE} RENAME TO {old_entries}")
        conn.execute(f"ALTER TABLE {_BINDINGS} RENAME TO {old_bindings}")
        conn.execute(f"DROP INDEX IF EXISTS ix_{_TABLE}_dataset")
        for table in (_TABLE, _BINDINGS):  # recreated on the new tables below
            for trigger in ("no_update", "no_delete"):
                conn.execute(f"DROP TRIGGER IF EXISTS {table}_{trigger}")
        _execute_script(conn, _SCHEMA + _BINDINGS_SCHEMA)
        source = _COLUMNS if version == 4 else f"{_COLUMNS_V3}, 'train'"
        previous = GENESIS_HASH
        rows = conn.execute(
            f"SELECT seq, {source} FROM {old_entries} ORDER BY seq"  # noqa: S608 - constants
        ).fetchall()
        for row in rows:
            try:
                entry = _entry(row[1:])
            except (TypeError, ValueError, PrivacyAccountingError) as exc:
                raise LedgerError(
                    f"The ledger {self.path} holds an invalid charge (seq {row[0]}: {exc}) "
                    f"and cannot be migrated. Restore it from a backup. {_NOT_DELETE}",
                    code="corrupt",
                ) from exc
            previous = entry_hash(previous, int(row[0]), entry)
            conn.execute(
                f"INSERT INTO {_TABLE} (seq, {_COLUMNS}, row_hash) "  # noqa: S608 - constants
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (int(row[0]), *_row(entry), previous),
            )
        previous = GENESIS_HASH
        bindings = conn.execute(
            f"SELECT {_BINDING_COLUMNS} FROM {old_bindings} ORDER BY rowid"  # noqa: S608
        ).fetchall()
        for seq, binding in enumerate(bindings, start=1):
            values = tuple(str(value) for value in binding)
            previous = binding_hash(previous, seq, *values)
            conn.execute(
                f"INSERT INTO {_BINDINGS} (seq, {_BINDING_COLUMNS}, row_hash) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?)",
                (seq, *values, previous),
            )
        conn.execute(f"DROP TABLE {old_entries}")
        conn.execute(f"DROP TABLE {old_bindings}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- the hash chains -------------------------------------------------------------

    def verify(self) -> ChainReport:
        """Recompute both hash chains, every row in ``seq`` order, as every open does.

        Returns the rows checked and the heads. A file older than schema 5 opened read-only
        has no hashes: the report says ``chained=False`` and nothing is verified.

        Raises:
            LedgerError: ``tampered`` naming the first row that does not match its hash (or
                the deleted last rows); ``read_failed`` or ``closed`` otherwise.
        """
        with self._mutex:
            return self._verify(self._open_conn())

    def head(self, dataset_id: str | None = None) -> str:
        """The chain head: the hash of the last charge recorded (of ``dataset_id``, if given).

        The hash of a charge commits to every charge recorded before it, of every dataset.
        :data:`GENESIS_HASH` when there is none. Read from the file, not re-verified (open
        and :meth:`verify` do that).

        Raises:
            LedgerError: ``not_chained`` for a file older than schema 5 opened read-only;
                ``read_failed`` or ``closed`` otherwise.
        """
        where, params = (
            ("", ())
            if dataset_id is None
            else (
                "WHERE dataset_id = ? ",
                (_text(dataset_id, "dataset_id"),),
            )
        )
        with self._mutex:
            conn = self._open_conn()
            if self._version < SCHEMA_VERSION:
                raise LedgerError(
                    f"The ledger {self.path} has schema version {self._version}, older than "
                    "hash chains (version 5): it has no head until the node's trainer opens "
                    "it and migrates it.",
                    code="not_chained",
                )
            try:
                row = conn.execute(
                    f"SELECT row_hash FROM {_TABLE} {where}"  # noqa: S608 - constants only
                    "ORDER BY seq DESC LIMIT 1",
                    params,
                ).fetchone()
            except sqlite3.Error as exc:
                raise self._read_error(exc) from exc
        return GENESIS_HASH if row is None else str(row[0])

    def _verify(self, conn: sqlite3.Connection) -> ChainReport:
        """Both chains, in one read transaction (one consistent snapshot even while the
        writer appends); the writer remembers each chain's last row."""
        try:
            conn.execute("BEGIN")
            try:
                if self._version < SCHEMA_VERSION:
                    return ChainReport(
                        schema_version=self._version,
                        chained=False,
                        rows=_count_rows(conn, _TABLE),
                        head=None,
                        bindings=_count_rows(conn, _BINDINGS) if self._version >= 3 else 0,
                        bindings_head=None,
                    )
                entries = self._verify_entries(conn)
                bindings = self._verify_bindings(conn)
            finally:
                if conn.in_transaction:  # a read transaction: nothing to commit, or undo
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._read_error(exc) from exc
        if not self.read_only:
            self._entries_link, self._bindings_link = entries[1], bindings[1]
        return ChainReport(
            schema_version=self._version,
            chained=True,
            rows=entries[0],
            head=entries[1].row_hash,
            bindings=bindings[0],
            bindings_head=bindings[1].row_hash,
        )

    def _verify_entries(self, conn: sqlite3.Connection) -> tuple[int, _Link]:
        link, checked = _START, 0
        query = f"SELECT seq, {_COLUMNS}, row_hash FROM {_TABLE} ORDER BY seq"  # noqa: S608
        for row in conn.execute(query):
            seq, stored = row[0], row[-1]
            try:
                expected: str | None = entry_hash(link.row_hash, int(seq), _entry_fields(row[1:-1]))
            except (TypeError, ValueError, OverflowError):
                expected = None  # a value of the wrong type: it was written outside Lepton FL
            if stored != expected:
                raise self._tampered(
                    f"the charge seq {seq} ({_describe_entry(row[1:-1])})", link.seq, seq
                )
            link, checked = _Link(int(seq), str(stored)), checked + 1
        self._check_not_truncated(conn, _TABLE, link, "charges")
        return checked, link

    def _verify_bindings(self, conn: sqlite3.Connection) -> tuple[int, _Link]:
        link, checked = _START, 0
        query = f"SELECT seq, {_BINDING_COLUMNS}, row_hash FROM {_BINDINGS} ORDER BY seq"  # noqa: S608
        for row in conn.execute(query):
            seq, stored = row[0], row[-1]
            try:
                values = tuple(_str(value) for value in row[1:-1])
                expected: str | None = binding_hash(link.row_hash, int(seq), *values)
            except (TypeError, ValueError, OverflowError):
                expected = None
            if stored != expected:
                raise self._tampered(
                    f"the run binding seq {seq} (admin run {row[1]!r}, Flower run {row[2]!r})",
                    link.seq,
                    seq,
                )
            link, checked = _Link(int(seq), str(stored)), checked + 1
        self._check_not_truncated(conn, _BINDINGS, link, "run bindings")
        return checked, link

    def _check_not_truncated(
        self, conn: sqlite3.Connection, table: str, last: _Link, what: str
    ) -> None:
        """SQLite's AUTOINCREMENT counter remembers the largest ``seq`` ever committed: a
        higher one than the last row's means rows at the end were deleted."""
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        assigned = 0 if row is None else int(row[0])
        if assigned > last.seq:
            raise LedgerError(
                f"The ledger {self.path} was tampered with: its {what} end at seq {last.seq}, "
                f"but SQLite had recorded up to seq {assigned}, so the last "
                f"{assigned - last.seq} were deleted. {_RESTORE} {_NOT_DELETE}",
                code="tampered",
            )

    def _tampered(self, row: str, previous_seq: int, seq: int) -> LedgerError:
        gap = (
            f"; rows {previous_seq + 1}..{seq - 1} before it are missing"
            if seq > previous_seq + 1
            else ""
        )
        return LedgerError(
            f"The ledger {self.path} was tampered with: {row} does not match its hash chain "
            f"(it was changed, or a row before it was deleted, reordered or changed{gap}). "
            f"{_RESTORE} {_NOT_DELETE}",
            code="tampered",
        )

    def _check_link(self, conn: sqlite3.Connection, table: str, link: _Link) -> None:
        """The writer appends only after the row it verified or wrote last: a different last
        row means the file was changed under it since."""
        row = conn.execute(
            f"SELECT seq, row_hash FROM {table} ORDER BY seq DESC LIMIT 1"  # noqa: S608
        ).fetchone()
        found = _START if row is None else _Link(int(row[0]), str(row[1]))
        if found != link:
            raise LedgerError(
                f"The ledger {self.path} was tampered with while this trainer had it open: "
                f"the last row of {table} is seq {found.seq} with hash {found.row_hash[:12]}..., "
                f"not seq {link.seq} ({link.row_hash[:12]}...) as verified or written. "
                f"{_RESTORE} {_NOT_DELETE}",
                code="tampered",
            )

    # -- writing -------------------------------------------------------------------

    def record(
        self,
        *,
        dataset_id: str,
        run_id: str,
        round: int,
        step: AccountantStep,
        accountant: str,
        delta: float,
        epsilon_after: float,
        num_examples: int,
        federation: str | None = None,
        kind: str = "train",
    ) -> LedgerEntry:
        """Append one charge, chained to the last one, in its own transaction, committed
        before this returns.

        ``federation`` names the federation the round was trained for (per-federation
        epsilon caps read it back); None only for callers that do not know it. ``kind``
        is ``"train"`` (a DP-SGD round) or ``"evaluate"`` (an evaluation release).

        Raises:
            LedgerError: ``duplicate_round`` when (dataset_id, run_id, round, kind) is
                already recorded (nothing is changed); ``invalid_entry`` for invalid values;
                ``tampered`` when the last row is not the one this writer verified or wrote;
                ``read_only``, ``closed`` or ``write_failed`` otherwise.
        """
        entry = LedgerEntry(
            dataset_id=_text(dataset_id, "dataset_id"),
            run_id=_text(run_id, "run_id"),
            round=_count(round, "round"),
            noise_multiplier=float(_step(step).noise_multiplier),
            sample_rate=float(step.sample_rate),
            steps=int(step.steps),
            accountant=_accountant(accountant),
            delta=_delta(delta),
            epsilon_after=_epsilon(epsilon_after),
            num_examples=_count(num_examples, "num_examples"),
            recorded_at=datetime.now(UTC).isoformat(timespec="microseconds"),
            federation=None if federation is None else _text(federation, "federation"),
            kind=_kind(kind),
        )
        with self._mutex:
            conn = self._writable()
            try:
                with _transaction(conn):
                    self._check_link(conn, _TABLE, self._entries_link)
                    seq = self._entries_link.seq + 1
                    row_hash = entry_hash(self._entries_link.row_hash, seq, entry)
                    conn.execute(
                        f"INSERT INTO {_TABLE} (seq, {_COLUMNS}, row_hash) "  # noqa: S608
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, *_row(entry), row_hash),
                    )
            except sqlite3.IntegrityError as exc:
                if getattr(exc, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_UNIQUE":
                    raise self._duplicate(conn, entry) from exc
                raise LedgerError(
                    f"The ledger {self.path} refused the entry {entry} ({exc}); this is a "
                    "bug in the caller's values.",
                    code="invalid_entry",
                ) from exc
            except sqlite3.Error as exc:
                raise self._write_error(exc, "nothing was recorded") from exc
            self._entries_link = _Link(seq, row_hash)
        return entry

    def bind_run(self, admin_run_id: str, flower_run_id: str, authorization_sha256: str) -> str:
        """Bind an admin run id to the first Flower run id that presents it; return the bound one.

        The first call for ``admin_run_id`` records (admin run id, Flower run id, SHA-256 of
        the signed authorization), chained to the last binding, and returns
        ``flower_run_id``; every later call returns the Flower run id recorded first (without
        writing), so the caller refuses any other as a replay. Committed before this
        returns; bindings are never changed or deleted.

        Raises:
            LedgerError: ``tampered`` when the last binding is not the one this writer
                verified or wrote; ``read_only``, ``closed`` or ``write_failed`` otherwise.
        """
        admin = _text(admin_run_id, "admin_run_id")
        flower = _text(flower_run_id, "flower_run_id")
        digest = _text(authorization_sha256, "authorization_sha256")
        with self._mutex:
            conn = self._writable()
            link = None
            try:
                with _transaction(conn):
                    row = conn.execute(
                        f"SELECT flower_run_id FROM {_BINDINGS} "  # noqa: S608
                        "WHERE admin_run_id = ?",
                        (admin,),
                    ).fetchone()
                    if row is None:
                        self._check_link(conn, _BINDINGS, self._bindings_link)
                        values = (
                            admin,
                            flower,
                            digest,
                            datetime.now(UTC).isoformat(timespec="seconds"),
                        )
                        seq = self._bindings_link.seq + 1
                        link = _Link(seq, binding_hash(self._bindings_link.row_hash, seq, *values))
                        conn.execute(
                            f"INSERT INTO {_BINDINGS} "  # noqa: S608 - constants only
                            f"(seq, {_BINDING_COLUMNS}, row_hash) VALUES (?, ?, ?, ?, ?, ?)",
                            (seq, *values, link.row_hash),
                        )
            except sqlite3.Error as exc:
                raise self._write_error(
                    exc, "the run binding was not recorded and the run is refused until it is"
                ) from exc
            if link is None:
                assert row is not None
                return str(row[0])
            self._bindings_link = link
        return flower

    def _write_error(self, exc: sqlite3.Error, consequence: str) -> LedgerError:
        return LedgerError(
            f"Cannot write to the ledger {self.path} ({exc}); {consequence}. Check disk "
            "space, that this node's user may write the file and its directory, and that no "
            "other process holds a long write lock.",
            code="write_failed",
        )

    def _read_error(self, exc: sqlite3.Error) -> LedgerError:
        return LedgerError(
            f"Cannot read the ledger {self.path} ({exc}); if this persists the file "
            f"may be damaged: restore it from a backup. {_NOT_DELETE}",
            code="read_failed",
        )

    def _duplicate(self, conn: sqlite3.Connection, entry: LedgerEntry) -> LedgerError:
        existing = self._select(
            conn,
            "WHERE dataset_id = ? AND run_id = ? AND round = ? AND kind = ?",
            (entry.dataset_id, entry.run_id, entry.round, entry.kind),
        )
        when = f" at {existing[0].recorded_at}" if existing else ""
        return LedgerError(
            f"The ledger {self.path} already holds a charge for dataset "
            f"{entry.dataset_id!r}, run {entry.run_id!r}, round {entry.round} ({entry.kind}; "
            f"recorded"
            f"{when}); a round is charged once. If the server resent the round, answer it "
            "from the recorded entry (Ledger.entry_for) instead of training again.",
            code="duplicate_round",
        )

    # -- reading -------------------------------------------------------------------

    def history(self, dataset_id: str) -> list[AccountantStep]:
        """Return the accountant history of ``dataset_id``, in insertion order."""
        return [entry.step for entry in self.entries(dataset_id)]

    def entries(self, dataset_id: str | None = None) -> list[LedgerEntry]:
        """Return the entries of ``dataset_id`` (all datasets if None), in insertion order."""
        if dataset_id is None:
            return self._read("", ())
        return self._read("WHERE dataset_id = ?", (_text(dataset_id, "dataset_id"),))

    @property
    def report_key_path(self) -> Path:
        """The node's secret key for `commitment` (0600, beside the ledger; back it up with
        the ledger: without it the reported commitments cannot be reproduced)."""
        return self.path.with_name(self.path.name + ".report-key")

    def commitment(self, row_hash: str) -> str | None:
        """What the node reports of a charge's row: HMAC-SHA256 of its ``row_hash`` under the
        node's `report_key_path`. Binding (a rewritten row no longer gives the reported
        value) without revealing the row: the row hash covers fields a coordinator must not
        learn, such as the example count under secure aggregation, which it could otherwise
        find by trying values. The writer creates the key; a reader without it gets None."""
        key = self._report_key()
        if key is None:
            return None
        return hmac.new(key, bytes.fromhex(row_hash), hashlib.sha256).hexdigest()

    def _report_key(self) -> bytes | None:
        path = self.report_key_path
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if self.read_only:
                return None
        try:
            write_file(path, secrets.token_bytes(32), mode=0o600)
            return path.read_bytes()
        except OSError as err:
            raise LedgerError(
                f"Cannot create the ledger's report key {path}: {err}.", code="write_failed"
            ) from err

    def row_commitments(self) -> dict[tuple[str, str, int, str], str]:
        """Each charge's `commitment` by (dataset, run, round, kind), as the node reported it
        with the charge (the coordinator's reconcile compares them); empty for a file older
        than schema 5 opened read-only, or without the node's report key."""
        key = self._report_key()
        if self._version < SCHEMA_VERSION or key is None:
            return {}
        with self._mutex:
            conn = self._open_conn()
            try:
                rows = conn.execute(
                    f"SELECT dataset_id, run_id, round, kind, row_hash FROM {_TABLE}"  # noqa: S608
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._read_error(exc) from exc
        return {
            (str(d), str(r), int(n), str(k)): hmac.new(
                key, bytes.fromhex(str(h)), hashlib.sha256
            ).hexdigest()
            for d, r, n, k, h in rows
        }

    def entry_for(
        self, dataset_id: str, run_id: str, round: int, *, kind: str = "train"
    ) -> LedgerEntry | None:
        """Return the ``kind`` entry of (dataset_id, run_id, round), or None if there is none."""
        found = self._read(
            "WHERE dataset_id = ? AND run_id = ? AND round = ? AND kind = ?",
            (
                _text(dataset_id, "dataset_id"),
                _text(run_id, "run_id"),
                _count(round, "round"),
                _kind(kind),
            ),
        )
        return found[0] if found else None

    def _read(self, where: str, params: tuple[object, ...]) -> list[LedgerEntry]:
        with self._mutex:
            conn = self._open_conn()
            try:
                return self._select(conn, where, params)
            except sqlite3.Error as exc:
                raise self._read_error(exc) from exc

    def _select(
        self, conn: sqlite3.Connection, where: str, params: tuple[object, ...]
    ) -> list[LedgerEntry]:
        query = f"SELECT {self._select_columns} FROM {_TABLE} {where} ORDER BY seq"  # noqa: S608
        rows = conn.execute(query, params).fetchall()
        try:
            return [_entry(row) for row in rows]
        except PrivacyAccountingError as exc:  # values that the CHECKs should have stopped
            raise LedgerError(
                f"The ledger {self.path} holds an invalid entry ({exc}). Restore it from a "
                f"backup. {_NOT_DELETE}",
                code="corrupt",
            ) from exc

    # -- lifecycle -----------------------------------------------------------------

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(
                f"The ledger {self.path} is closed; open a new Ledger to use it.", code="closed"
            )
        return self._conn

    def _writable(self) -> sqlite3.Connection:
        conn = self._open_conn()
        if self.read_only:
            raise LedgerError(
                f"The ledger {self.path} was opened read-only; only the node's trainer "
                "records charges.",
                code="read_only",
            )
        return conn

    def close(self) -> None:
        """Close the connection and release the writer lock; safe to call twice."""
        with self._mutex:
            conn, self._conn = self._conn, None
            lock_file, self._lock_file = self._lock_file, None
        if conn is not None:
            conn.close()
        if lock_file is not None:
            lock_file.close()  # closing the descriptor releases the flock

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else ("read-only" if self.read_only else "open")
        return f"Ledger({str(self.path)!r}, {state})"


def _acquire_writer_lock(path: Path) -> IO[bytes] | None:
    """Take an exclusive, non-blocking flock on ``<path>.lock`` (POSIX only)."""
    if sys.platform == "win32":  # pragma: no cover - nodes run on Linux
        return None
    import fcntl

    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = lock_path.open("ab")
    except OSError as exc:
        raise LedgerError(
            f"Cannot create the ledger lock file {lock_path} ({exc}); give a ledger path "
            "in a directory that this node's user can write.",
            code="unwritable",
        ) from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise LedgerError(
            f"Another process (or another Ledger in this one) already has the ledger "
            f"{path} open for writing (lock {lock_path}). Only one trainer may write a "
            "node's ledger: stop the other one, or open this one with read_only=True.",
            code="locked_by_other_writer",
        ) from exc
    return handle


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction, committed on success and rolled back otherwise. SQLite itself
    rolls back after some errors (a full disk, an I/O error): the rollback is then skipped,
    so that the error reported is the cause, not "cannot rollback"."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Run each statement in the caller's transaction (``executescript`` would commit it)."""
    for statement in script.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def _count_rows(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


# -- the hash chains -------------------------------------------------------------------


def _digest(body: list[object]) -> str:
    """SHA-256 of the canonical JSON of ``body``: a list of strings, whole numbers and None,
    so every field is delimited and escaped, and no two rows encode alike."""
    text = json.dumps(body, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def entry_hash(previous: str, seq: int, entry: LedgerEntry) -> str:
    """The ``row_hash`` of a charge: its ``seq`` and every recorded field (floats by
    ``float.hex``, exact to the bit), after the previous charge's hash."""
    return _digest(
        [
            _ENTRY_TAG,
            previous,
            seq,
            entry.dataset_id,
            entry.run_id,
            entry.round,
            float(entry.noise_multiplier).hex(),
            float(entry.sample_rate).hex(),
            entry.steps,
            entry.accountant,
            float(entry.delta).hex(),
            float(entry.epsilon_after).hex(),
            entry.num_examples,
            entry.recorded_at,
            entry.federation,
            entry.kind,
        ]
    )


def binding_hash(
    previous: str,
    seq: int,
    admin_run_id: str,
    flower_run_id: str,
    authorization_sha256: str,
    bound_at: str,
) -> str:
    """The ``row_hash`` of a run binding, after the previous binding's hash."""
    return _digest(
        [_BINDING_TAG, previous, seq, admin_run_id, flower_run_id, authorization_sha256, bound_at]
    )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, found {value!r}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole number, found {value!r}")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, float | int):
        raise TypeError(f"expected a number, found {value!r}")
    return float(value)


def _entry_fields(row: tuple[Any, ...]) -> LedgerEntry:
    """A stored charge exactly as the columns hold it (no range checks), for hashing: a
    value of another type than Lepton FL writes raises TypeError."""
    return LedgerEntry(
        dataset_id=_str(row[0]),
        run_id=_str(row[1]),
        round=_int(row[2]),
        noise_multiplier=_float(row[3]),
        sample_rate=_float(row[4]),
        steps=_int(row[5]),
        accountant=_str(row[6]),
        delta=_float(row[7]),
        epsilon_after=_float(row[8]),
        num_examples=_int(row[9]),
        recorded_at=_str(row[10]),
        federation=None if row[11] is None else _str(row[11]),
        kind=_str(row[12]),
    )


def _describe_entry(row: tuple[Any, ...]) -> str:
    """Dataset, run, round and kind of a stored charge, as stored."""
    return f"dataset {row[0]!r}, run {row[1]!r}, round {row[2]!r}, {row[12]}"


# -- validation and conversion ---------------------------------------------------------


def _invalid(message: str) -> LedgerError:
    return LedgerError(message, code="invalid_entry")


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(f"{name} must be a non-empty string, got {value!r}.")
    return value


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise _invalid(f"{name} must be a whole number >= 0, got {value!r}.")
    return int(value)


def _step(value: object) -> AccountantStep:
    if not isinstance(value, AccountantStep):
        raise _invalid(f"step must be an AccountantStep, got {value!r}.")
    return value


def _accountant(value: object) -> str:
    if value not in ("rdp", "prv"):
        raise _invalid(f"accountant must be 'rdp' or 'prv', got {value!r}.")
    return str(value)


def _delta(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 < float(value) < 1.0
    ):
        raise _invalid(f"delta must be a number strictly between 0 and 1, got {value!r}.")
    return float(value)


def _epsilon(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or float(value) < 0
    ):
        raise _invalid(
            f"epsilon_after must be a finite number >= 0, got {value!r}; a round with "
            "unbounded epsilon must be refused, not recorded."
        )
    return float(value)


def _kind(value: object) -> str:
    if value not in KINDS:
        raise _invalid(f"kind must be one of {KINDS}, got {value!r}.")
    assert isinstance(value, str)
    return value


def _row(entry: LedgerEntry) -> tuple[object, ...]:
    return (
        entry.dataset_id,
        entry.run_id,
        entry.round,
        entry.noise_multiplier,
        entry.sample_rate,
        entry.steps,
        entry.accountant,
        entry.delta,
        entry.epsilon_after,
        entry.num_examples,
        entry.recorded_at,
        entry.federation,
        entry.kind,
    )


def _entry(row: tuple[Any, ...]) -> LedgerEntry:
    entry = LedgerEntry(
        dataset_id=str(row[0]),
        run_id=str(row[1]),
        round=int(row[2]),
        noise_multiplier=float(row[3]),
        sample_rate=float(row[4]),
        steps=int(row[5]),
        accountant=str(row[6]),
        delta=float(row[7]),
        epsilon_after=float(row[8]),
        num_examples=int(row[9]),
        recorded_at=str(row[10]),
        federation=None if row[11] is None else str(row[11]),
        kind=str(row[12]),
    )
    AccountantStep(entry.noise_multiplier, entry.sample_rate, entry.steps)  # validates
    return entry
