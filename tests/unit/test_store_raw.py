"""The driver-level helpers of `store/db.py` store and read exactly what SQLAlchemy's own statements do."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, insert, select, update

from scaleset.store.db import (
    Database,
    bind_processor_of,
    execute_many,
    result_processor_of,
    rows_by_ids,
    select_in,
    sqlite_url,
)

_metadata = MetaData()
_things = Table(
    "things",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("status", String(16)),
    Column("at", DateTime(timezone=True), nullable=True),
    Column("doc", JSON, nullable=True),
)
ROWS = 2000  # more than one statement's worth of ids


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(sqlite_url(tmp_path))
    _metadata.create_all(database.engine)
    with database.write() as session:
        session.execute(insert(_things), [{"id": i, "status": "new"} for i in range(1, ROWS + 1)])
    try:
        yield database
    finally:
        database.close()


def _stored(db: Database, ids: list[int]) -> list[tuple[Any, ...]]:
    """The rows as the database holds them (text for the datetime and the JSON)."""
    with db.read() as session:
        return sorted(rows_by_ids(session, "things", ("status", "at", "doc"), ids))


def test_execute_many_stores_what_a_core_update_stores(db: Database) -> None:
    moment = datetime(2026, 12, 3, 13, 45, 6, 789, tzinfo=UTC)
    doc = {"incarnation": 3, "extensions": [["health", False]], "customData": True}
    with db.write() as session:
        session.connection().execute(
            update(_things).where(_things.c.id == 1).values(status="done", at=moment, doc=doc)
        )
        at = bind_processor_of(session, _things.c.at)
        as_json = bind_processor_of(session, _things.c.doc)
        execute_many(
            session,
            "UPDATE things SET status = ?, at = ?, doc = ? WHERE id = ?",
            [("done", at(moment), as_json(doc), 2), ("done", at(moment + timedelta(0)), as_json(doc), 3)],
        )

    core, first, second = _stored(db, [1, 2, 3])
    assert core == first == second
    with db.read() as session:
        read = list(session.execute(select(_things.c.at, _things.c.doc).where(_things.c.id.in_([1, 2]))))
    assert read[0] == read[1]
    assert read[1][1] == doc and read[1][0].replace(tzinfo=UTC) == moment


def test_execute_many_with_nothing_to_do_does_nothing(db: Database) -> None:
    with db.write() as session:
        execute_many(session, "UPDATE things SET status = ? WHERE id = ?", [])
    assert {row[0] for row in _stored(db, list(range(1, ROWS + 1)))} == {"new"}


def test_execute_many_writes_inside_the_session_transaction(db: Database) -> None:
    with pytest.raises(RuntimeError), db.write() as session:
        execute_many(session, "UPDATE things SET status = ? WHERE id = ?", [("done", 1)])
        raise RuntimeError("rolled back")
    assert _stored(db, [1])[0][0] == "new"


def test_select_in_reads_every_id_across_statements(db: Database) -> None:
    ids = list(range(1, ROWS + 1, 2))
    with db.write() as session:
        execute_many(session, "UPDATE things SET status = ? WHERE id = ?", [("odd", i) for i in ids])
    with db.read() as session:
        found = select_in(
            session, "SELECT id FROM things WHERE status = 'odd' AND id IN ({ids})", [*ids, ROWS + 7]
        )
        assert select_in(session, "SELECT id FROM things WHERE id IN ({ids})", []) == []
    assert sorted(row_id for (row_id,) in found) == ids


def test_result_processor_of_reads_json_as_sqlalchemy_does(db: Database) -> None:
    doc = {"a": "1.2", "b": None}
    with db.write() as session:
        session.connection().execute(update(_things).where(_things.c.id == 5).values(doc=doc))
    with db.read() as session:
        (text,) = select_in(session, "SELECT doc FROM things WHERE id IN ({ids})", [5])[0]
        assert result_processor_of(session, _things.c.doc)(text) == doc
        assert result_processor_of(session, _things.c.status)("x") == "x"  # no conversion: as it is
