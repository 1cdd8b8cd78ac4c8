"""Alembic environment: the connection (or URL) comes from `coordinator.db.engine`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from coordinator.db.tables import METADATA

config = context.config


def run_migrations() -> None:
    """Online migrations on the connection we were given (or a fresh one)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=METADATA)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.attributes["database_url"])
    with engine.connect() as fresh:
        context.configure(connection=fresh, target_metadata=METADATA)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
