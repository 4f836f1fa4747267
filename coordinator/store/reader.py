"""Reads: one read transaction per query on the reader pool, retried while the database is away.

A PostgreSQL restart or a killed backend breaks every pooled connection at once.
Like the writer, a read is retried on a fresh connection with backoff until
``retry_deadline`` passes, then fails with :class:`~conveyor.errors.Unavailable`,
so callers see either an answer or a clear "retry later", never a driver error.
The waiting happens on the event loop, not in a worker thread, so an outage does
not tie up the threads other reads and writes need.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import Connection

from conveyor.backoff import Backoff
from conveyor.errors import Unavailable

from .database import DATABASE_RETRY_BACKOFF, Database
from .dialect import describe_error, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")


class Reader:
    def __init__(self, database: Database, *, retry_deadline: float = 60.0) -> None:
        self._database = database
        self._retry_deadline = retry_deadline

    async def run(self, query: Callable[[Connection], T], *, snapshot: bool = False) -> T:
        """Run ``query`` in a read transaction; ``snapshot`` makes all its statements see one state.

        SQLite's read transactions always do; PostgreSQL's READ COMMITTED gives each
        statement its own snapshot, so there a snapshot read runs at REPEATABLE READ.
        """
        backoff = Backoff(DATABASE_RETRY_BACKOFF, deadline=self._retry_deadline)
        while True:
            try:
                return await asyncio.to_thread(self._once, query, snapshot)
            except Exception as error:
                if not is_transient(error):
                    raise
                delay = backoff.next_delay()
                if delay is None:
                    log.error("database read failed for good: %s", describe_error(error))
                    raise Unavailable(
                        f"the database is unavailable ({describe_error(error)}); retry later"
                    ) from error
                log.warning("database read failed (%s); retrying in %.2fs", describe_error(error), delay)
            await asyncio.sleep(delay)

    def _once(self, query: Callable[[Connection], T], snapshot: bool) -> T:
        with self._database.reader.connect() as connection:
            if snapshot and self._database.dialect.name == "postgresql":
                connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                return query(connection)
