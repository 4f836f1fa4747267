"""One coordinator per database: an exclusive lock held for the coordinator's whole life.

On PostgreSQL the coordinator server uses the database's leadership instead
(:mod:`.leadership`: a leader, standbys, fencing by term); this lock remains SQLite's rule
and that of a bare :class:`~conveyor.coordinator.engine.Coordinator` started without it.

A second coordinator on the same database would recover as if the first had crashed,
requeueing the tasks the first one's live executors are running. So a coordinator takes
an exclusive lock before touching the database (even before migrating) and keeps it
until it stops; a second one refuses to start, naming the holder.

* PostgreSQL: a session-level advisory lock, keyed by database and schema (a schema is a
  separate Conveyor database), on a connection of its own. The lock lives exactly as long
  as that connection, so the writer checks the connection before every commit; once it is
  gone, the lock may be someone else's, and this coordinator is *fenced*: every later
  write fails with :class:`~conveyor.errors.DatabaseInUse` until it is restarted.
* SQLite: ``flock`` on ``<database file>.lock``; the kernel drops it when the process
  exits, however it exits. The lock file holds the holder's description.

Who holds the lock is also recorded in the ``coordinator_holder`` table (host, pid, start
time), which the refusal quotes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import IO

from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from conveyor.backoff import Backoff, BackoffPolicy
from conveyor.errors import DatabaseInUse

from ..clock import now_us
from .dialect import Dialect, SQLiteDialect
from .schema import coordinator_holder

log = logging.getLogger(__name__)

#: First half of the PostgreSQL advisory lock key ("coor"); the second is the hash of
#: database and schema. The two-key form never collides with the migration lock's one key.
ADVISORY_CLASS = 0x636F6F72
#: How long a starting coordinator waits for the lock before refusing to start.
ACQUIRE_WAIT = 5.0
#: Between tries for a lock held by another (or not yet released by a killed) coordinator.
LOCK_RETRY_BACKOFF = BackoffPolicy(initial=0.1, maximum=1.0, jitter=0.5)
_LOCK_KEY = f"{ADVISORY_CLASS}, hashtext(current_database() || '.' || current_schema())"


def describe_holder(host: str, pid: int, started_at_us: int) -> str:
    started = datetime.fromtimestamp(started_at_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"the coordinator on host {host}, pid {pid}, started {started}"


class DatabaseLock:
    """The exclusive coordinator lock of one database: ``acquire()``, ``check()``, ``release()``."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = now_us()
        self.fenced: str | None = None
        self._file: IO[str] | None = None
        self._engine: Engine | None = None
        self._connection: Connection | None = None
        #: PostgreSQL backend pid of the lock connection (tests kill it to fence).
        self.backend_pid: int | None = None
        self._mutex = threading.Lock()

    @property
    def description(self) -> str:
        return describe_holder(self.host, self.pid, self.started_at)

    def acquire(self, wait: float = ACQUIRE_WAIT) -> None:
        """Take the lock, or raise :class:`DatabaseInUse` naming who holds it.

        Tries for ``wait`` seconds first: a coordinator restarted right after its
        predecessor was killed may find the old lock connection not yet closed by the server.
        """
        backoff = Backoff(LOCK_RETRY_BACKOFF, deadline=wait)
        while True:
            try:
                if isinstance(self.dialect, SQLiteDialect):
                    self._acquire_file(self.dialect)
                else:
                    self._acquire_advisory()
                break
            except DatabaseInUse:
                delay = backoff.next_delay()
                if delay is None:
                    raise
                time.sleep(delay)
        log.info("holding the exclusive coordinator lock of %s", self.dialect.display_url())

    def _acquire_file(self, dialect: SQLiteDialect) -> None:
        path = dialect.path.with_name(dialect.path.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the lock's life
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another coordinator (it wrote no description)"
            handle.close()
            raise DatabaseInUse(
                f"{dialect.path} is in use by {holder} (it holds {path}); only one coordinator may use a "
                "database. Stop that one first, or point --db at another database"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(self.description + "\n")
        handle.flush()
        self._file = handle

    def _acquire_advisory(self) -> None:
        self._engine = create_engine(self.dialect.url, poolclass=NullPool)
        connection = self._engine.connect()
        connection.execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = connection.execute(text(f"SELECT pg_try_advisory_lock({_LOCK_KEY})")).scalar_one()
            if not got:
                holder = self._advisory_holder(connection)
                raise DatabaseInUse(
                    f"database {self.dialect.display_url()} is in use by {holder}; only one coordinator "
                    "may use a database (and schema). Stop that one first, or point --db at another database"
                )
            self.backend_pid = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
        except BaseException:
            connection.close()
            self._engine.dispose()
            self._engine = None
            raise
        self._connection = connection

    @staticmethod
    def _advisory_holder(connection: Connection) -> str:
        parts = []
        with contextlib.suppress(Exception):  # before its first migration the table does not exist
            row = connection.execute(
                select(coordinator_holder.c.host, coordinator_holder.c.pid, coordinator_holder.c.started_at)
            ).first()
            if row is not None:
                parts.append(describe_holder(row.host, row.pid, row.started_at))
        with contextlib.suppress(Exception):
            backend = connection.execute(
                text(
                    "SELECT a.pid, coalesce(host(a.client_addr), 'local socket') FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                    f"AND l.classid = {ADVISORY_CLASS} "
                    "AND l.objid = hashtext(current_database() || '.' || current_schema())::oid"
                )
            ).first()
            if backend is not None:
                parts.append(f"PostgreSQL backend {backend[0]} from {backend[1]}")
        return "; ".join(parts) or "another coordinator"

    def record_holder(self, connection: Connection) -> None:
        """Write who holds the lock into ``coordinator_holder`` (after migrating)."""
        connection.execute(coordinator_holder.delete())
        connection.execute(
            coordinator_holder.insert().values(id=1, host=self.host, pid=self.pid, started_at=self.started_at)
        )

    def check(self) -> None:
        """Raise unless the lock is still held; the writer calls this before every commit.

        A dead lock connection (a network blip, a database restart) does not by itself
        mean another coordinator took over: the lock is taken again on a new connection,
        provided nobody held it in between (the holder row still names this coordinator).
        While the database is unreachable this raises the connection error, which the
        writer retries like any other. If another coordinator holds or held the lock, this
        one is fenced for good: :class:`DatabaseInUse` from then on, until restarted.
        """
        if self.fenced is not None:
            raise DatabaseInUse(self.fenced)
        if self._engine is None:
            return  # SQLite: the file lock lasts as long as the process
        with self._mutex:
            if self._connection is not None:
                try:
                    self._connection.execute(text("SELECT 1")).scalar_one()
                    return
                except Exception as error:
                    log.warning("the database lock connection died (%s); taking the lock again", error)
                    with contextlib.suppress(Exception):
                        self._connection.invalidate()
                        self._connection.close()
                    self._connection = None
            self._reacquire()  # raises the connection error while the database is unreachable
        if self.fenced is not None:
            log.error("%s", self.fenced)
            raise DatabaseInUse(self.fenced)

    def _reacquire(self) -> None:
        assert self._engine is not None
        connection = self._engine.connect()
        connection.execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = connection.execute(text(f"SELECT pg_try_advisory_lock({_LOCK_KEY})")).scalar_one()
            holder = None
            if got:
                holder = connection.execute(
                    select(
                        coordinator_holder.c.host, coordinator_holder.c.pid, coordinator_holder.c.started_at
                    )
                ).first()
            if got and holder is not None and tuple(holder) == (self.host, self.pid, self.started_at):
                self.backend_pid = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
                self._connection = connection
                log.warning("took the database lock again; nobody held it in between")
                return
        except BaseException:
            connection.close()
            raise
        connection.close()  # ends the session, releasing the lock if it was just taken
        named = "" if holder is None else f" ({describe_holder(holder.host, holder.pid, holder.started_at)})"
        self.fenced = (
            "this coordinator lost its exclusive lock on the database (its lock connection died) and "
            + ("another coordinator holds it now" if not got else f"another coordinator held it since{named}")
            + ", so it no longer writes; restart it"
        )

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        with self._mutex:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.close()  # ends the session: the advisory lock goes with it
                self._connection = None
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
