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
a round has at most one charge of each kind. A writer rebuilds a version-3 table in place
(every entry kept, in order, as ``"train"``); a read-only opener reads older files as they
are.
"""

from __future__ import annotations

import math
import numbers
import sqlite3
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from lepton_fl.privacy.accounting import AccountantStep, PrivacyAccountingError

SCHEMA_VERSION = 4
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
    UNIQUE (dataset_id, run_id, round, kind)
);
CREATE INDEX ix_{_TABLE}_dataset ON {_TABLE} (dataset_id, seq);
CREATE TRIGGER {_TABLE}_no_update BEFORE UPDATE ON {_TABLE}
BEGIN SELECT RAISE(ABORT, 'privacy ledger entries are append-only'); END;
CREATE TRIGGER {_TABLE}_no_delete BEFORE DELETE ON {_TABLE}
BEGIN SELECT RAISE(ABORT, 'privacy ledger entries are append-only'); END;
"""
_BINDINGS = "run_bindings"
_BINDINGS_SCHEMA = f"""
CREATE TABLE {_BINDINGS} (
    admin_run_id TEXT PRIMARY KEY CHECK (length(admin_run_id) > 0),
    flower_run_id TEXT NOT NULL CHECK (length(flower_run_id) > 0),
    authorization_sha256 TEXT NOT NULL CHECK (length(authorization_sha256) = 64),
    bound_at TEXT NOT NULL
);
CREATE TRIGGER {_BINDINGS}_no_update BEFORE UPDATE ON {_BINDINGS}
BEGIN SELECT RAISE(ABORT, 'run bindings are append-only'); END;
CREATE TRIGGER {_BINDINGS}_no_delete BEFORE DELETE ON {_BINDINGS}
BEGIN SELECT RAISE(ABORT, 'run bindings are append-only'); END;
"""
_NOT_DELETE = (
    "Do not delete it: it is this node's record of the privacy it has spent, and a new "
    "ledger would forget that spending."
)


class LedgerError(RuntimeError):
    """The ledger could not be opened, read or written; ``code`` says which case.

    Codes: ``path_is_directory``, ``unwritable``, ``missing``, ``unreadable``,
    ``corrupt``, ``not_a_ledger``, ``schema_too_new``, ``locked_by_other_writer``,
    ``read_only``, ``closed``, ``invalid_entry``, ``duplicate_round``, ``write_failed``,
    ``read_failed``.
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


class Ledger:
    """A node's persistent, append-only ledger of privacy charges per dataset."""

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        """Open (and, unless ``read_only``, create) the ledger at ``path``.

        A writer creates the parent directory and the schema, switches the file to WAL
        mode and takes an exclusive lock on ``<path>.lock`` for as long as it is open.
        A reader (``read_only=True``) needs an existing ledger and never writes.

        Raises:
            LedgerError: the path is a directory, cannot be created or read, is not a
                ledger, is corrupt, was written by a newer schema, or is already open
                for writing by another process.
        """
        self.path = Path(path)
        self.read_only = read_only
        self._mutex = threading.Lock()
        self._lock_file: IO[bytes] | None = None
        self._conn: sqlite3.Connection | None = None
        self._select_columns = _COLUMNS
        if self.path.is_dir():
            raise LedgerError(
                f"The ledger path {self.path} is a directory; give the path of a file "
                f"inside it, for example {self.path / 'ledger.sqlite3'}.",
                code="path_is_directory",
            )
        try:
            self._conn = self._open_reader() if read_only else self._open_writer()
            self._check_schema(self._conn)
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
            if version == 1 and self.read_only:  # read as it is; the writer migrates it
                self._select_columns = f"{_COLUMNS_V1}, NULL, 'train'"
                return
            if version in (2, 3) and self.read_only:  # every charge before v4 is training
                self._select_columns = f"{_COLUMNS_V3}, 'train'"
                return
            if version == 0 and self.read_only:
                raise LedgerError(
                    f"The file {self.path} is not a Lepton FL ledger (it has no ledger "
                    "schema); check the path.",
                    code="not_a_ledger",
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._create_schema(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
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
        if version == 3:
            self._migrate_v3(conn)
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
        for statement in (_SCHEMA + _BINDINGS_SCHEMA).split(";\n"):
            if statement.strip():
                conn.execute(statement)
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
            for statement in _BINDINGS_SCHEMA.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("PRAGMA user_version = 3")

    def _migrate_v3(self, conn: sqlite3.Connection) -> None:
        """Version 3 -> 4: add the ``kind`` column and key charges by (dataset, run, round,
        kind). SQLite cannot change a UNIQUE constraint in place, so the table is rebuilt in
        this transaction: every entry is copied with its ``seq`` (order kept) as
        ``"train"``, then the old table is dropped (dropping fires no DELETE trigger)."""
        old = f"{_TABLE}_v3"
        conn.execute(f"ALTER TABLE {_TABLE} RENAME TO {old}")
        conn.execute(f"DROP INDEX IF EXISTS ix_{_TABLE}_dataset")
        for trigger in ("no_update", "no_delete"):  # recreated on the new table below
            conn.execute(f"DROP TRIGGER IF EXISTS {_TABLE}_{trigger}")
        for statement in _SCHEMA.split(";\n"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(
            f"INSERT INTO {_TABLE} (seq, {_COLUMNS}) "  # noqa: S608 - constants only
            f"SELECT seq, {_COLUMNS_V3}, 'train' FROM {old} ORDER BY seq"
        )
        conn.execute(f"DROP TABLE {old}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
        """Append one charge in its own transaction, committed before this returns.

        ``federation`` names the federation the round was trained for (per-federation
        epsilon caps read it back); None only for callers that do not know it. ``kind``
        is ``"train"`` (a DP-SGD round) or ``"evaluate"`` (an evaluation release).

        Raises:
            LedgerError: ``duplicate_round`` when (dataset_id, run_id, round, kind) is
                already recorded (nothing is changed); ``invalid_entry`` for invalid values;
                ``read_only``, ``closed`` or ``write_failed`` otherwise.
        """
        entry = LedgerEntry(
            dataset_id=_text(dataset_id, "dataset_id"),
            run_id=_text(run_id, "run_id"),
            round=_count(round, "round"),
            noise_multiplier=_step(step).noise_multiplier,
            sample_rate=step.sample_rate,
            steps=step.steps,
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
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(
                        f"INSERT INTO {_TABLE} ({_COLUMNS}) "  # noqa: S608 - constants only
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        _row(entry),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError as exc:
                if getattr(exc, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_UNIQUE":
                    raise self._duplicate(conn, entry) from exc
                raise LedgerError(
                    f"The ledger {self.path} refused the entry {entry} ({exc}); this is a "
                    "bug in the caller's values.",
                    code="invalid_entry",
                ) from exc
            except sqlite3.Error as exc:
                raise LedgerError(
                    f"Cannot write to the ledger {self.path} ({exc}); nothing was recorded, "
                    "so do not reply to the server for this round. Check disk space, "
                    "permissions, and that no other process holds a long write lock.",
                    code="write_failed",
                ) from exc
        return entry

    def bind_run(self, admin_run_id: str, flower_run_id: str, authorization_sha256: str) -> str:
        """Bind an admin run id to the first Flower run id that presents it; return the bound one.

        The first call for ``admin_run_id`` records (admin run id, Flower run id, SHA-256 of
        the signed authorization) and returns ``flower_run_id``; every later call returns the
        Flower run id recorded first, so the caller refuses any other as a replay. Committed
        before this returns; bindings are never changed or deleted.
        """
        admin = _text(admin_run_id, "admin_run_id")
        flower = _text(flower_run_id, "flower_run_id")
        digest = _text(authorization_sha256, "authorization_sha256")
        with self._mutex:
            conn = self._writable()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(
                        f"INSERT OR IGNORE INTO {_BINDINGS} "  # noqa: S608 - constants only
                        "(admin_run_id, flower_run_id, authorization_sha256, bound_at) "
                        "VALUES (?, ?, ?, ?)",
                        (admin, flower, digest, datetime.now(UTC).isoformat(timespec="seconds")),
                    )
                    row = conn.execute(
                        f"SELECT flower_run_id FROM {_BINDINGS} "  # noqa: S608
                        "WHERE admin_run_id = ?",
                        (admin,),
                    ).fetchone()
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise LedgerError(
                    f"Cannot record the run binding in the ledger {self.path} ({exc}); the "
                    "run is refused until it can be recorded. Check disk space and "
                    "permissions.",
                    code="write_failed",
                ) from exc
        return str(row[0])

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
                raise LedgerError(
                    f"Cannot read the ledger {self.path} ({exc}); if this persists the file "
                    f"may be damaged: restore it from a backup. {_NOT_DELETE}",
                    code="read_failed",
                ) from exc

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
