"""The database: engine, migrations at start, and the unit of work.

SQLite is the embedded default; PostgreSQL works through `--database-url`. Writers in this process take
one lock, because SQLite allows one writer and a deferred transaction that upgrades to a write lock fails
at once instead of waiting; with the lock every write waits its turn. Readers never take it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import ColumnElement, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
CACHE_KIB = 32 * 1024
MMAP_BYTES = 256 * 2**20


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'scaleset.db'}"


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; the busy timeout covers other processes (the CLI never
    # opens the database, but a second server pointed at the same file would).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # SQLite's default page cache is 2 MB: a fleet of 100 000 instances outgrows it, and then every row
    # the engine reads is a system call. A larger cache per connection, and the file mapped into memory
    # (shared by every connection, so it costs nothing twice), keep the engine's reads in memory.
    cursor.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    cursor.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    cursor.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        connect_args = {"check_same_thread": False, "timeout": 30} if self.is_sqlite else {}
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _tune_sqlite)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.RLock()
        self._watcher: sqlite3.Connection | None = None
        self._watcher_lock = threading.Lock()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (run at every start; a no-op when current)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits when the block ends without an exception, else rolls back."""
        with self._write_lock, self._sessions() as session, session.begin():
            yield session

    def change_token(self) -> int | None:
        """A number that differs from the last one this returned whenever anything committed a change to
        the database in between, from this process or any other; None when that cannot be known.

        What lets the rolling engine keep the rows it read in one pass for the next when nothing was
        written meanwhile (an upgrade waiting for health spends most of its passes like that). On SQLite it
        is `PRAGMA data_version` on a connection of its own that never writes: SQLite changes that number
        for every commit by any other connection, whatever process made it. Other databases have no such
        cheap signal here, so callers always read again there. Read the token *before* the rows it
        vouches for: a commit between the two then only costs one read too many."""
        database = self.engine.url.database
        if (
            self.engine.url.drivername not in ("sqlite", "sqlite+pysqlite")
            or not database
            or database == ":memory:"
            or database.startswith("file:")
        ):
            # Not a plain SQLite file (an in-memory database is one per connection, a URI or another
            # driver may name it otherwise): read every pass.
            return None
        with self._watcher_lock:
            if self._watcher is None:
                # A plain sqlite3 connection in autocommit, so that no read transaction of its own can
                # hold the number still.
                self._watcher = sqlite3.connect(
                    database, check_same_thread=False, timeout=30, isolation_level=None
                )
            return int(self._watcher.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        with self._watcher_lock:
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
        self.engine.dispose()


@contextmanager
def _driver_cursor(session: Session) -> Iterator[tuple[Any, str]]:
    """A cursor of the driver itself on the session's connection (so inside its transaction), and the
    driver's placeholder (`?` for sqlite3, `%s` for psycopg)."""
    connection = session.connection()
    placeholder = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cursor, placeholder
    finally:
        cursor.close()


def raw_rows(session: Session, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Our own `sql` (written with `?` placeholders) as plain tuples, on the session's connection and inside
    its transaction, without SQLAlchemy's statement and result machinery: for reads an engine pass repeats,
    where that machinery costs more than the database. Never for text that comes from a request."""
    with _driver_cursor(session) as (cursor, placeholder):
        cursor.execute(sql.replace("?", placeholder), list(parameters))
        return list(cursor.fetchall())


def rows_by_ids(
    session: Session, table: str, columns: Sequence[str], ids: Sequence[Any], key: str = "id"
) -> list[tuple[Any, ...]]:
    """`SELECT columns FROM table WHERE key IN ids` as plain tuples, on the session's own connection (so
    inside its transaction), without SQLAlchemy's statement and result machinery.

    For the few reads an engine pass repeats over hundreds of rows at a time: there, binding an IN list
    through SQLAlchemy (and reading its rows by name) costs several times what SQLite does. Names come
    from our own code, never from a request; the values are bound parameters."""
    return select_in(session, f"SELECT {', '.join(columns)} FROM {table} WHERE {key} IN ({{ids}})", ids)


# SQLite binds at most 32 766 parameters per statement (999 before 3.32).
_IDS_PER_STATEMENT = 900


def select_in(
    session: Session, query: str, ids: Sequence[Any], leading: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """The rows of `query`, whose one `{ids}` stands for an IN list of `ids`, as plain tuples, on the
    session's own connection (inside its transaction): `rows_by_ids` for a query of another shape (a
    join, another condition beside the IN). `leading` are the values of the `?` placeholders before the
    IN list. The query comes from our own code, never from a request; the ids are bound parameters,
    `_IDS_PER_STATEMENT` at a time."""
    if not ids:
        return []
    with _driver_cursor(session) as (cursor, placeholder):
        query = query.replace("?", placeholder)
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), _IDS_PER_STATEMENT):
            chunk = list(ids[start : start + _IDS_PER_STATEMENT])
            cursor.execute(query.format(ids=", ".join([placeholder] * len(chunk))), [*leading, *chunk])
            found.extend(cursor.fetchall())
        return found


def execute_many(session: Session, statement: str, rows: Sequence[Sequence[Any]]) -> None:
    """`statement` once for each row of parameters, with the DBAPI cursor's own executemany on the
    session's connection (inside its transaction).

    For the writes an engine pass repeats over hundreds of rows: SQLAlchemy builds and processes a
    parameter dictionary per row, which costs several times what SQLite does. `statement` marks its
    parameters `?` (no other `?` may appear in it) and is rewritten for a `format` driver; the values go
    to the driver as they are, so a value whose column type converts it (a datetime on SQLite, JSON)
    must be passed through `bind_processor_of` first."""
    if not rows:
        return
    with _driver_cursor(session) as (cursor, placeholder):
        cursor.executemany(statement.replace("?", placeholder), rows)


def bind_processor_of(session: Session, column: ColumnElement[Any]) -> Callable[[Any], Any]:
    """What SQLAlchemy does to a Python value of `column` before it reaches this session's driver (a
    datetime made text on SQLite, a dict made JSON), for values written with `execute_many`."""
    dialect = session.connection().dialect
    # The dialect's own implementation of the type (SQLite's DATETIME for DateTime), as SQLAlchemy uses.
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else _unchanged


def result_processor_of(session: Session, column: ColumnElement[Any]) -> Callable[[Any], Any]:
    """What SQLAlchemy does to a value of `column` the driver returned (JSON text parsed on SQLite), for
    values read with `rows_by_ids` or `select_in`."""
    dialect = session.connection().dialect
    process = column.type.dialect_impl(dialect).result_processor(dialect, None)
    return process if process is not None else _unchanged


def _unchanged(value: Any) -> Any:
    return value
