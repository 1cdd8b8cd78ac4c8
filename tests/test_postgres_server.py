"""The throwaway PostgreSQL of the test suite: reachable with SQLAlchemy, on 127.0.0.1 only."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from postgres_server import PostgresServer, PostgresServerError

_LISTEN: str = "0A"  # TCP state LISTEN in /proc/net/tcp


@pytest.fixture
def engine(postgres_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(postgres_url)
    yield engine
    engine.dispose()


def _listening_addresses(port: int) -> list[str]:
    """Local addresses with a TCP socket listening on ``port``, from /proc/net/tcp{,6}."""
    addresses: list[str] = []
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text(encoding="ascii").splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != _LISTEN or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(address)
            # /proc writes each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            addresses.append(str(ipaddress.ip_address(raw)))
    return addresses


def test_postgres_url_uses_psycopg_on_loopback(postgres_url: str) -> None:
    url = sa.make_url(postgres_url)

    assert url.drivername == "postgresql+psycopg"
    assert url.host == "127.0.0.1"
    assert url.username == "postgres"


def test_postgres_create_insert_and_read_back(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    notes = sa.Table(
        "pg_fixture_notes",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.String(200), nullable=False),
    )
    metadata.create_all(engine)
    try:
        with engine.begin() as connection:
            connection.execute(sa.insert(notes), [{"text": "Zürich"}, {"text": "ε = 2.5"}])

        with engine.connect() as connection:
            rows = connection.execute(sa.select(notes.c.text).order_by(notes.c.id)).scalars()
            assert list(rows) == ["Zürich", "ε = 2.5"]
            assert connection.execute(sa.text("SHOW server_encoding")).scalar() == "UTF8"
    finally:
        metadata.drop_all(engine)


def test_postgres_listens_on_127_0_0_1_only(engine: sa.Engine, postgres_url: str) -> None:
    port = sa.make_url(postgres_url).port
    assert port is not None

    with engine.connect() as connection:
        listen = connection.execute(sa.text("SHOW listen_addresses")).scalar()
        server_address = connection.execute(sa.text("SELECT host(inet_server_addr())")).scalar()

    assert listen == "127.0.0.1"
    assert server_address == "127.0.0.1"
    if Path("/proc/net/tcp").exists():
        assert _listening_addresses(port) == ["127.0.0.1"]


def test_postgres_server_refuses_a_directory_without_binaries(tmp_path: Path) -> None:
    with pytest.raises(PostgresServerError) as excinfo:
        PostgresServer(tmp_path)

    assert excinfo.value.code == "postgres-missing"
    assert "apt-get install" in str(excinfo.value)
