"""The Alembic migrations build exactly the schema the tables declare, and re-running them is a no-op."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from scaleset.store.db import Database, sqlite_url
from scaleset.store.tables import Base


def test_migrations_match_the_tables(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    db.migrate()  # every start runs it; the second time must change nothing

    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)

    assert differences == []
    db.close()
