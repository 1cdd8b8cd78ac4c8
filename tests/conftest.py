"""Shared fixtures: a real PostgreSQL for the storage tests (see tests/postgres_server.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from postgres_server import INSTALL_HINT, PostgresServer, find_postgres_bindir


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (psycopg 3) of an empty database on a throwaway PostgreSQL.

    One cluster per test session, on 127.0.0.1 only; stopped and deleted at the end. Without
    PostgreSQL the tests that use it are skipped, except under CI (env ``CI`` set): there
    they fail, because CI must run them.
    """
    bindir = find_postgres_bindir()
    if bindir is None:
        message = f"PostgreSQL is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests. {message}", pytrace=False)
        pytest.skip(message)
    server = PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


# -- the admin service: databases, a real SuperLink, an API client ---------------------------

import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import psycopg  # noqa: E402
from admin_support import AdminApi, start_superlink  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from coordinator.db import Database  # noqa: E402
from coordinator.superlink import SuperLink  # noqa: E402


def _fresh_postgres_database(server_url: str) -> str:
    """A new, empty database on the throwaway PostgreSQL (one per test)."""
    url = make_url(server_url)
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty admin database: a real SQLite file, then a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'admin.db'}"
    return _fresh_postgres_database(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The admin database at `database_url`, migrated to the latest schema."""
    database = Database(database_url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLink]:
    """One real flower-superlink (TLS, node auth) on 127.0.0.1 for the API tests."""
    running = start_superlink(tmp_path_factory.mktemp("superlink"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def api(tmp_path: Path, superlink: SuperLink) -> Iterator[AdminApi]:
    """The real admin app on a real SQLite file, wired to the real SuperLink."""
    with AdminApi.start(tmp_path / "coordinator", superlink) as client:
        yield client
