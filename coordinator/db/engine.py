"""Engine, sessions and schema upgrades for the admin database (SQLite or PostgreSQL).

`Database.write()` opens one transaction that later writers wait for: on SQLite it starts
with `BEGIN IMMEDIATE` (the write lock is taken up front, so two processes, the API and a
ServerApp, never interleave read-then-write sequences such as appending to the audit
chain); on PostgreSQL the audit append takes a transaction-scoped advisory lock.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, bindparam, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import Session, SQLModel

T = TypeVar("T", bound=SQLModel)


class DatabaseError(RuntimeError):
    """The database URL is unusable or the database cannot be reached or upgraded."""

    def __init__(self, message: str, *, code: str = "database_unavailable") -> None:
        super().__init__(message)
        self.code = code


def default_sqlite_url(data_dir: Path) -> str:
    """The embedded default: a SQLite file in the coordinator's data directory."""
    return f"sqlite:///{(data_dir / 'admin.db').resolve()}"


def _check_url(url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise DatabaseError(
            f"The database URL {url!r} is not a valid SQLAlchemy URL; use "
            "sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB.",
            code="invalid_database_url",
        ) from err
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseError(
            f"The database URL {parsed.render_as_string(hide_password=True)} names the "
            f"{parsed.get_backend_name()!r} backend; Lepton supports sqlite and postgresql.",
            code="invalid_database_url",
        )
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_engine(url: str, *, immediate: bool, pooled: bool) -> Engine:
    """A SQLite engine. Writers begin with BEGIN IMMEDIATE; readers emit no BEGIN at all:
    each statement is its own snapshot (SQLite autocommit), which is what single-row reads
    and the append-only tables need, and it spares two statements per read."""
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if pooled:
        kwargs.update(pool_size=8, max_overflow=48)
    else:
        kwargs["poolclass"] = NullPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    if immediate:

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_NAMED_PARAM = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")


def driver_sql(session: Session, sql: str, params: dict[str, Any]) -> Any:
    """Run hand-written SQL (`:name` parameters) on the session's DB-API connection.

    For the few statements on the hot write path (the audit append, creating a tenant):
    it skips SQLAlchemy's statement compilation and result machinery, inside the
    session's transaction. Returns the DB-API cursor (the caller fetches and closes).
    """
    cached = session.info.get("driver_connection")
    if cached is None:
        connection = session.connection()
        cached = (connection.connection.driver_connection, connection.dialect.name)
        session.info["driver_connection"] = cached
    dbapi, dialect = cached
    assert dbapi is not None
    if dialect != "sqlite":
        sql = _NAMED_PARAM.sub(r"%(\1)s", sql)
    cursor = dbapi.cursor()
    cursor.execute(sql, params)
    return cursor


class Record(dict[str, Any]):
    """A row as returned by `Database.fetch`: a dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


class Database:
    """The admin database: a read engine and a write engine over one URL."""

    def __init__(self, url: str, *, pooled: bool = True) -> None:
        self.url = _check_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        if self.dialect == "sqlite":
            path = make_url(self.url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.read_engine = _sqlite_engine(self.url, immediate=False, pooled=pooled)
            self.write_engine = _sqlite_engine(self.url, immediate=True, pooled=pooled)
        else:
            kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 8, "max_overflow": 24}
            if not pooled:
                del kwargs["pool_size"], kwargs["max_overflow"]
                kwargs["poolclass"] = NullPool
            self.read_engine = self.write_engine = create_engine(self.url, **kwargs)
        # SQLite has one writer at a time: threads of this process queue here and wake as
        # soon as the lock is free, instead of polling SQLite's busy handler (which sleeps
        # in growing steps). Other processes (ServerApps) still meet the busy handler.
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._fetch_cache: dict[type[SQLModel], tuple[str, bool]] = {}
        #: Called with each write session just before it commits (the audit log's
        #: checkpoint signer): what they add commits in the same transaction.
        self.before_commit: list[Callable[[Session], None]] = []

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; nothing it does is committed."""
        with Session(self.read_engine) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with (
            self._write_lock or contextlib.nullcontext(),
            Session(self.write_engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session
            for hook in self.before_commit:
                hook(session)

    def fetch(self, model: type[T], ident: str) -> T | None:
        """One row by primary key: the hot read path.

        Returns a read-only record with the model's attributes, not an ORM instance (building
        one costs more than the query). The SQL is compiled once per table for this engine's
        dialect and run on a pooled DB-API connection.
        """
        sql, positional = self._fetch_sql(model)
        params: Any = (ident,) if positional else {"ident": ident}
        connection = self.read_engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(sql, params)
                row = cursor.fetchone()
                names = [d[0] for d in cursor.description or ()]
            finally:
                cursor.close()
        finally:
            connection.close()  # back to the pool (rolled back there)
        return None if row is None else cast("T", Record(zip(names, row, strict=True)))

    def _fetch_sql(self, model: type[SQLModel]) -> tuple[str, bool]:
        cached = self._fetch_cache.get(model)
        if cached is None:
            table = model.__table__  # type: ignore[attr-defined]
            (key,) = table.primary_key.columns
            compiled = (
                select(table)
                .where(key == bindparam("ident"))
                .compile(dialect=self.read_engine.dialect)
            )
            cached = (str(compiled), bool(compiled.positional))
            self._fetch_cache[model] = cached
        return cached

    def upgrade(self) -> None:
        """Create or upgrade the schema to the latest Alembic revision."""
        upgrade_schema(self)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()


def migrations_directory() -> Path:
    """The Alembic scripts, shipped as package data."""
    return Path(str(resources.files("coordinator.db") / "migrations"))


def alembic_config(database: Database) -> Config:
    """An Alembic configuration bound to `database` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    config.attributes["database_url"] = database.url
    return config


def upgrade_schema(database: Database, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision`; errors name the database and the fix."""
    try:
        with database.write_engine.connect() as connection:
            config = alembic_config(database)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
    except OperationalError as err:
        raise DatabaseError(
            f"Cannot open or upgrade the admin database {database.safe_url}: "
            f"{err.orig}. Check that it is reachable and writable.",
        ) from err
    except SQLAlchemyError as err:
        raise DatabaseError(
            f"Upgrading the admin database {database.safe_url} failed: {err}.",
            code="database_upgrade_failed",
        ) from err
