"""The single writer: every write transaction of the coordinator runs on one thread.

Work arrives as *units*, functions of a ``Connection``. The writer takes every unit
waiting (lingering ``group_commit_window`` for more) and runs them in one database
transaction, each inside its own SAVEPOINT so that one unit's failure cannot undo
another's work: group commit. Batching is what makes SQLite fast (one fsync for
many units) and keeps PostgreSQL round trips few; the single thread is what makes
SQLite claims safe without row locks.

When the connection breaks (PostgreSQL restarted, backend killed, SQLite busy) the
whole batch is retried on a fresh connection with backoff until
``retry_deadline`` passes; then its units fail with :class:`~conveyor.errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from conveyor.errors import ConveyorError, Unavailable

from .dialect import describe_error, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")
Unit = Callable[[Connection], T]


@dataclass
class _Pending:
    unit: Callable[[Connection], Any]
    label: str
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_STOP = object()


class Writer:
    """Runs write units on one thread, many to a transaction."""

    def __init__(
        self,
        engine: Engine,
        *,
        group_commit_window: float = 0.001,
        max_units_per_transaction: int = 256,
        retry_deadline: float = 60.0,
    ) -> None:
        self._engine = engine
        self._window = group_commit_window
        self._max_units = max_units_per_transaction
        self._retry_deadline = retry_deadline
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="conveyor-writer", daemon=True)
        self._connection: Connection | None = None
        self.transactions = 0
        self.units = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs (false once it died or was stopped)."""
        return self._thread.is_alive()

    async def stop(self) -> None:
        """Finish the units already submitted, then stop the thread."""
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    async def run(self, unit: Callable[[Connection], T], label: str) -> T:
        """Run ``unit`` in a write transaction and return what it returns.

        Exceptions raised by the unit propagate here; the unit's writes are rolled
        back, other units of the same transaction are unaffected.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Pending(unit, label, future, loop))
        return await future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Pending)
            batch = [first]
            stop_after = self._gather(batch)
            self._execute(batch)
            if stop_after:
                break
        if self._connection is not None:
            self._connection.close()

    def _gather(self, batch: list[_Pending]) -> bool:
        """Add the units that arrive within the window; True if a stop request came in."""
        deadline = time.monotonic() + self._window
        while len(batch) < self._max_units:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            assert isinstance(item, _Pending)
            batch.append(item)
        return False

    def _execute(self, batch: list[_Pending]) -> None:
        deadline = time.monotonic() + self._retry_deadline
        delay = 0.05
        while True:
            try:
                outcomes = self._transaction(batch)
            except Exception as error:
                self._discard_connection()
                if is_transient(error) and time.monotonic() + delay < deadline:
                    log.warning(
                        "database write failed (%s); retrying %d unit(s) in %.2fs",
                        describe_error(error),
                        len(batch),
                        delay,
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                log.error("database write failed for good: %s", describe_error(error))
                unavailable = Unavailable(
                    f"the database is unavailable ({describe_error(error)}); the request was not applied, "
                    "retry later"
                )
                outcomes = [(None, unavailable)] * len(batch)
            break
        for pending, (result, failure) in zip(batch, outcomes, strict=True):
            pending.loop.call_soon_threadsafe(_resolve, pending.future, result, failure)

    def _transaction(self, batch: list[_Pending]) -> list[tuple[Any, BaseException | None]]:
        if self._connection is None:
            self._connection = self._engine.connect()
        connection = self._connection
        outcomes: list[tuple[Any, BaseException | None]] = []
        with connection.begin():
            for pending in batch:
                savepoint = connection.begin_nested()
                try:
                    result = pending.unit(connection)
                except Exception as error:
                    savepoint.rollback()
                    if is_transient(error):
                        raise
                    if not isinstance(error, ConveyorError):
                        log.exception("write unit %r failed", pending.label)
                    outcomes.append((None, error))
                else:
                    savepoint.commit()
                    outcomes.append((result, None))
        self.transactions += 1
        self.units += len(batch)
        return outcomes

    def _discard_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except Exception:
                log.debug("closing a broken connection failed", exc_info=True)
            self._connection = None


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
