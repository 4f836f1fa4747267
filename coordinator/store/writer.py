"""The single writer: every write transaction of the coordinator runs on one thread.

Work arrives as *units*, functions of a ``Connection``. The writer takes every unit
waiting (lingering ``group_commit_window`` for more) and runs them in one database
transaction: group commit. One unit's failure must not undo another's work, so a batch
whose unit fails is rolled back and run again with each unit inside its own SAVEPOINT.
Units rarely fail, so a batch first runs without them: two statements (on PostgreSQL two
round trips) less per unit. Running a unit again after a rollback is nothing new: a batch
that meets a broken connection is run again whole. Batching is what makes SQLite fast (one fsync for
many units) and keeps PostgreSQL round trips few; the single thread is what makes
SQLite claims safe without row locks.

When the connection breaks (PostgreSQL restarted, backend killed, SQLite busy) the
whole batch is retried on a fresh connection with backoff until
``retry_deadline`` passes; then its units fail with :class:`~conveyor.errors.Unavailable`.

A break *during COMMIT* leaves the outcome unknown: the server may have committed. Units
are not idempotent (a claim claims again, a start without a key starts twice), so the
batch must not simply run again. Every transaction therefore also writes a commit
marker, a row with a new id; after an unknown outcome the writer looks for it on a
fresh connection before doing anything else, and hands out the results it already has
if the transaction committed.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine, delete, exc, insert
from sqlalchemy.engine import Connection

from conveyor import tracing
from conveyor.backoff import Backoff
from conveyor.errors import ConveyorError, Unavailable

from ..clock import now_us
from .database import DATABASE_RETRY_BACKOFF
from .dialect import describe_error, is_transient
from .schema import write_commits

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

Outcomes = list[tuple[Any, BaseException | None]]


class _UnknownOutcome(Exception):
    """COMMIT failed on a broken connection: the transaction may have committed."""

    def __init__(self, marker: str, outcomes: Outcomes, cause: BaseException) -> None:
        super().__init__(describe_error(cause))
        self.marker = marker
        self.outcomes = outcomes
        self.cause = cause


class Writer:
    """Runs write units on one thread, many to a transaction."""

    def __init__(
        self,
        engine: Engine,
        *,
        group_commit_window: float = 0.001,
        max_units_per_transaction: int = 256,
        retry_deadline: float = 60.0,
        guard: Callable[[], None] | None = None,
        fence: Callable[[Connection], None] | None = None,
    ) -> None:
        self._engine = engine
        #: Called before every commit; raises to refuse it (the database lock was lost).
        self._guard = guard
        #: Runs first in every transaction; raises to refuse it (leadership.py: the leader's term).
        self._fence = fence
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
            # A root span (parent={}): one commit holds the writes of many workflows and callers.
            with tracing.span(
                "conveyor.commit",
                parent={},
                attributes={
                    "conveyor.commit.units": len(batch),
                    "conveyor.commit.labels": ",".join(sorted({p.label for p in batch})),
                },
            ):
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
        backoff = Backoff(DATABASE_RETRY_BACKOFF, deadline=self._retry_deadline)
        #: The attempt whose COMMIT broke, until its marker tells whether it committed.
        unknown: _UnknownOutcome | None = None
        while True:
            try:
                if unknown is not None:
                    if self._committed(unknown.marker):
                        log.warning(
                            "the commit of %d unit(s) broke the connection (%s) but had committed; "
                            "not running them again",
                            len(batch),
                            unknown,
                        )
                        outcomes = self._counted(batch, unknown.outcomes)
                        break
                    log.warning("the commit of %d unit(s) had not committed; running them again", len(batch))
                    unknown = None
                outcomes = self._transaction(batch)
            except _UnknownOutcome as outcome:
                unknown = outcome
                error: BaseException = outcome.cause
            except Exception as raised:
                error = raised
            else:
                break
            self._discard_connection()
            delay = backoff.next_delay() if is_transient(error) else None
            if delay is not None:
                log.warning(
                    "database write failed (%s); retrying %d unit(s) in %.2fs",
                    describe_error(error),
                    len(batch),
                    delay,
                )
                time.sleep(delay)
                continue
            log.error("database write failed for good: %s", describe_error(error))
            if unknown is not None:
                message = (
                    f"the database connection broke while committing ({describe_error(error)}) and the "
                    "database stayed unreachable, so whether the request was applied is unknown; check "
                    "its effect (or retry it with an idempotency key) once the database is back"
                )
            else:
                message = (
                    f"the database is unavailable ({describe_error(error)}); the request was not applied, "
                    "retry later"
                )
            failure = error if isinstance(error, ConveyorError) else Unavailable(message)
            outcomes = [(None, failure)] * len(batch)
            break
        # One wake-up of each caller's event loop per batch, not one per unit.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]]
        by_loop = {}
        for pending, (result, refused) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(pending.loop, []).append((pending.future, result, refused))
        for loop, resolutions in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, resolutions)

    def _transaction(self, batch: list[_Pending]) -> Outcomes:
        try:
            return self._attempt(batch, isolated=False)
        except _UnitFailed as failed:
            if len(batch) > 1:
                return self._attempt(batch, isolated=True)
            # Alone in its transaction, the unit's failure is the whole outcome: nothing to commit.
            _report_unit_failure(batch[0].label, failed.error)
            return [(None, failed.error)]

    def _attempt(self, batch: list[_Pending], *, isolated: bool) -> Outcomes:
        """One transaction of ``batch``; ``isolated`` puts each unit in a SAVEPOINT of its own.

        Not isolated, a unit that fails rolls the whole transaction back (`_UnitFailed`).
        """
        if self._connection is None:
            self._connection = self._engine.connect()
        connection = self._connection
        outcomes: Outcomes = []
        marker = uuid.uuid4().hex
        transaction = connection.begin()
        try:
            if self._fence is not None:
                self._fence(connection)
            for pending in batch:
                if not isolated:
                    try:
                        outcomes.append((pending.unit(connection), None))
                    except Exception as error:
                        if is_transient(error):
                            raise
                        raise _UnitFailed(error) from error
                    continue
                savepoint = connection.begin_nested()
                try:
                    result = pending.unit(connection)
                except Exception as error:
                    savepoint.rollback()
                    if is_transient(error):
                        raise
                    _report_unit_failure(pending.label, error)
                    outcomes.append((None, error))
                else:
                    savepoint.commit()
                    outcomes.append((result, None))
            # The older markers are settled (their transactions' outcomes are known): the
            # table holds one row, or two while a commit's outcome is being checked.
            connection.execute(delete(write_commits).where(write_commits.c.id != marker))
            connection.execute(insert(write_commits).values(id=marker, committed_at=now_us()))
            if self._guard is not None:
                self._guard()
        except BaseException:
            if transaction.is_active:
                try:
                    transaction.rollback()
                except Exception:  # a broken connection: the caller discards it
                    log.debug("rolling back a failed transaction failed", exc_info=True)
            raise
        try:
            transaction.commit()
        except Exception as error:
            if is_transient(error):
                raise _UnknownOutcome(marker, outcomes, error) from error
            raise
        return self._counted(batch, outcomes)

    def _counted(self, batch: list[_Pending], outcomes: Outcomes) -> Outcomes:
        self.transactions += 1
        self.units += len(batch)
        return outcomes

    def _committed(self, marker: str) -> bool:
        """Whether the transaction that wrote ``marker`` committed, asked on a fresh connection.

        Inserting the marker again (then rolling back) rather than reading it: if the old
        transaction is still finishing on the server, the insert waits for it on the
        primary key, so the answer is never "not yet visible".
        """
        self._discard_connection()
        self._connection = self._engine.connect()
        connection = self._connection
        probe = connection.begin()
        try:
            connection.execute(insert(write_commits).values(id=marker, committed_at=now_us()))
        except exc.IntegrityError:
            return True
        finally:
            probe.rollback()
        return False

    def _discard_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except Exception:
                log.debug("closing a broken connection failed", exc_info=True)
            self._connection = None


class _UnitFailed(Exception):
    """A unit raised (not a database outage) in a transaction run without savepoints."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _report_unit_failure(label: str, error: Exception) -> None:
    if not isinstance(error, ConveyorError):
        log.error("write unit %r failed", label, exc_info=error)


def _resolve_all(resolutions: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in resolutions:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
