"""A fresh, empty database for every run, and what it weighs afterwards.

SQLite runs get a new file in the run's directory; PostgreSQL runs get a schema of
their own (reached through ``search_path``), so earlier data never mixes into a
run's numbers and several runs can share one server. The schema is dropped on
exit unless the caller keeps it.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
#: Seconds between maintenance checks on a server without autovacuum (see :func:`autovacuum_stand_in`).
VACUUM_CHECK_INTERVAL = 5.0


@dataclass(frozen=True)
class RunDatabase:
    #: "sqlite" or "postgresql"
    kind: str
    #: What the coordinator is given (PostgreSQL: with ``search_path`` set to the run's schema).
    url: str
    sqlite_path: Path | None = None
    schema: str | None = None

    def size_bytes(self) -> int:
        """Bytes on disk: the SQLite file with its WAL, or every relation of the schema with indexes."""
        if self.sqlite_path is not None:
            return sum(
                path.stat().st_size
                for path in (self.sqlite_path, Path(f"{self.sqlite_path}-wal"))
                if path.exists()
            )
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as connection:
                return int(
                    connection.execute(
                        sa.text(
                            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = :schema AND c.relkind = 'r'"
                        ),
                        {"schema": self.schema},
                    ).scalar_one()
                )
        finally:
            engine.dispose()


@contextlib.contextmanager
def autovacuum_stand_in(database: RunDatabase, interval: float = VACUUM_CHECK_INTERVAL) -> Iterator[bool]:
    """Vacuum and analyze a PostgreSQL run's tables as autovacuum would, if the server does
    not (``autovacuum = off``); yields whether it does so.

    Every ``interval`` seconds it applies autovacuum's default rules to each of the
    run's tables: VACUUM ANALYZE once dead rows exceed 50 + 20% of live rows, ANALYZE
    once rows changed since the last analyze exceed 50 + 10%. Without it a queue table
    that churns hundreds of rows a second fills with dead rows (the replay queue held
    250,000 dead rows for 80 live ones in one run) and every scan slows down; and the
    planner keeps planning for the empty tables it last saw. Production servers run
    autovacuum; this stands in for it, and the report says so.
    """
    if database.kind != "postgresql":
        yield False
        return
    engine = sa.create_engine(database.url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            autovacuum = connection.execute(sa.text("SHOW autovacuum")).scalar_one()
        if autovacuum == "on":
            yield False
            return
        stop = threading.Event()

        def maintain_until_stopped() -> None:
            while not stop.wait(interval):
                with engine.connect() as connection:
                    for table, live, dead, changed in connection.execute(
                        sa.text(
                            "SELECT relname, n_live_tup, n_dead_tup, n_mod_since_analyze "
                            "FROM pg_stat_user_tables WHERE schemaname = :schema"
                        ),
                        {"schema": database.schema},
                    ).all():
                        if dead > 50 + 0.2 * live:
                            connection.execute(sa.text(f'VACUUM (ANALYZE) "{table}"'))
                        elif changed > 50 + 0.1 * live:
                            connection.execute(sa.text(f'ANALYZE "{table}"'))

        thread = threading.Thread(target=maintain_until_stopped, name="autovacuum stand-in", daemon=True)
        thread.start()
        try:
            yield True
        finally:
            stop.set()
            thread.join()
    finally:
        engine.dispose()


def redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def fresh_database(
    kind: str, workdir: Path, postgres_url: str = DEFAULT_POSTGRES_URL, *, keep: bool = False
) -> Iterator[RunDatabase]:
    """A new database of ``kind`` ("sqlite" or "postgresql", or a full SQLAlchemy URL)."""
    if kind == "sqlite":
        path = (workdir / "conveyor.db").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        yield RunDatabase("sqlite", f"sqlite:///{path}", sqlite_path=path)
        return
    if kind == "postgresql":
        base_url = postgres_url
    elif kind.startswith("postgresql"):
        base_url = kind
    elif kind.startswith("sqlite:///"):
        yield RunDatabase("sqlite", kind, sqlite_path=Path(sa.engine.make_url(kind).database or ""))
        return
    else:
        raise ValueError(f"unknown database {kind!r}: use sqlite, postgresql or a SQLAlchemy URL")
    schema = f"conveyor_bench_{uuid.uuid4().hex[:8]}"
    # Pre-ping: the server may have restarted since the schema was made (the chaos soak restarts it).
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base_url else "?"
    try:
        yield RunDatabase(
            "postgresql", f"{base_url}{separator}options=-csearch_path%3D{schema}", schema=schema
        )
    finally:
        if not keep:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
