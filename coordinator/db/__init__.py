"""The admin service's database: SQLModel tables, the engine, and Alembic migrations.

Only `coordinator.services` writes through these; the API reads through the services too.
"""

from coordinator.db.engine import Database, DatabaseError, default_sqlite_url, upgrade_schema

__all__ = ["Database", "DatabaseError", "default_sqlite_url", "upgrade_schema"]
