"""Everything that differs between SQLite and PostgreSQL, in one place.

* SQLite: WAL journal, ``BEGIN IMMEDIATE`` for writes (pysqlite's own transaction
  handling is switched off, so SQLAlchemy's SAVEPOINTs work), foreign keys on, a
  busy timeout. ``SELECT ... FOR UPDATE`` renders as nothing on SQLite; claims are
  correct there because the coordinator's single writer thread serializes them.
* PostgreSQL (psycopg 3): READ COMMITTED, pre-pinged pooled connections, claims
  with ``FOR UPDATE SKIP LOCKED``, an advisory lock around migrations.

The rest of the store is written once against SQLAlchemy Core and asks this module
for the few constructs that differ.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Engine, Integer, Table, create_engine, event, exc, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from conveyor.errors import ConfigurationError

T = TypeVar("T")

#: SQLite only auto-increments a column declared exactly ``INTEGER PRIMARY KEY``.
AUTOINCREMENT_ID = BigInteger().with_variant(Integer(), "sqlite")
#: Page cache per SQLite connection, in KiB (see ``SQLiteDialect.create_engine``).
SQLITE_PAGE_CACHE_KIB = 64 * 1024


class Dialect(ABC):
    """A database kind the store can run on."""

    name: str

    def __init__(self, url: str) -> None:
        self.url = url

    @abstractmethod
    def create_engine(self, *, writer: bool, pool_size: int) -> Engine:
        """An engine whose transactions suit the writer thread or the readers."""

    @abstractmethod
    def insert_ignoring_duplicates(self, table: Table) -> Insert:
        """``INSERT`` that skips rows whose primary key already exists."""

    def unindexed(self, column: ColumnElement[T]) -> ColumnElement[T]:
        """``column`` as a term the planner will not answer from the column's own index.

        PostgreSQL plans from table statistics and gets the plain column; see SQLite's.
        """
        return column

    @contextlib.contextmanager
    def migration_lock(self, connection: Connection) -> Iterator[None]:
        """Keep two processes from migrating the same database at once."""
        yield

    def display_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)


class SQLiteDialect(Dialect):
    name = "sqlite"

    def __init__(self, url: str, *, synchronous: str = "FULL", busy_timeout: float = 30.0) -> None:
        super().__init__(url)
        #: How long a statement waits for another process's lock before failing (seconds).
        self.busy_timeout = busy_timeout
        database = make_url(url).database
        if not database or database == ":memory:":
            raise ConfigurationError(
                "SQLite needs a database file (e.g. sqlite:///conveyor.db): the coordinator's writer "
                "and readers use separate connections, which an in-memory database cannot share"
            )
        self.path = Path(database)
        self.synchronous = synchronous

    def create_engine(self, *, writer: bool, pool_size: int) -> Engine:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            self.url,
            connect_args={"check_same_thread": False, "timeout": self.busy_timeout},
            pool_size=pool_size,
            max_overflow=0,
        )
        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"
        synchronous = self.synchronous
        busy_ms = int(self.busy_timeout * 1000)

        @event.listens_for(engine, "connect")
        def configure(dbapi_connection: Any, _record: Any) -> None:
            # Hand transaction control to SQLAlchemy (see the "begin" hook below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in (
                "PRAGMA journal_mode=WAL",
                f"PRAGMA synchronous={synchronous}",
                "PRAGMA foreign_keys=ON",
                f"PRAGMA busy_timeout={busy_ms}",
                # SQLite's default page cache (2 MiB) holds only the top of the queue and
                # journal indexes once a database has tens of thousands of workflows; every
                # other page read then costs a system call.
                f"PRAGMA cache_size=-{SQLITE_PAGE_CACHE_KIB}",
            ):
                cursor.execute(pragma)
            cursor.close()

        @event.listens_for(engine, "begin")
        def start_transaction(connection: Connection) -> None:
            # IMMEDIATE takes the write lock up front: a deferred transaction that
            # upgrades to writing later can fail with SQLITE_BUSY half-way through.
            connection.exec_driver_sql(begin)

        return engine

    def insert_ignoring_duplicates(self, table: Table) -> Insert:
        return sqlite.insert(table).on_conflict_do_nothing()

    def unindexed(self, column: ColumnElement[T]) -> ColumnElement[T]:
        # SQLite plans without statistics (nothing runs ANALYZE), so it takes any equality
        # on an indexed column for a selective one, even `name IN (...)` that matches every
        # row; `column || ''` (or `column + 0` for a number) keeps that index out of the plan.
        if column.type.python_type is int:
            return column + 0
        return column.concat("")


class PostgresDialect(Dialect):
    name = "postgresql"

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.drivername != "postgresql+psycopg":
            raise ConfigurationError(
                f"unsupported PostgreSQL driver {parsed.drivername!r}; use postgresql+psycopg://..."
            )
        super().__init__(parsed.render_as_string(hide_password=False))

    def create_engine(self, *, writer: bool, pool_size: int) -> Engine:
        return create_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=0 if writer else pool_size,
            pool_pre_ping=True,
            isolation_level="READ COMMITTED",
        )

    def insert_ignoring_duplicates(self, table: Table) -> Insert:
        return postgresql.insert(table).on_conflict_do_nothing()

    @contextlib.contextmanager
    def migration_lock(self, connection: Connection) -> Iterator[None]:
        key = 0x636F6E76  # "conv"
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def insert_or_ignore(connection: Connection, table: Table) -> Insert:
    """``Dialect.insert_ignoring_duplicates`` for code that holds a connection but no Dialect
    (the cancel paths, reached from every kind of write unit)."""
    if connection.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return postgresql.insert(table).on_conflict_do_nothing()


def dialect_for(url: str, *, sqlite_synchronous: str = "FULL", sqlite_busy_timeout: float = 30.0) -> Dialect:
    """The dialect strategy for a SQLAlchemy URL."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return SQLiteDialect(url, synchronous=sqlite_synchronous, busy_timeout=sqlite_busy_timeout)
    if backend in ("postgresql", "postgres"):
        return PostgresDialect(url)
    raise ConfigurationError(
        f"unsupported database {backend!r} in {url!r}: use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
    )


def is_transient(error: BaseException) -> bool:
    """Whether retrying the transaction on a fresh connection may succeed.

    Covers a restarted or unreachable PostgreSQL, killed backends and a busy SQLite
    file; not constraint violations or programming errors.
    """
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, exc.OperationalError | exc.InterfaceError)


def describe_error(error: BaseException) -> str:
    """A database error in one short line (drivers' messages run to many lines)."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}"[:300]
