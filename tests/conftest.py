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
