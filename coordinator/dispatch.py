"""Moving tasks: claiming them for executors with free credits and sending them down their
streams, taking their results back, and taking back attempts past their deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from . import protocol
from .clock import now_us
from .context import EngineContext
from .sessions import SessionState
from .store import ClaimedTask, Disposition, ReportedResult, deadlines, holdings
from .store.deadlines import ExpiryOutcome

log = logging.getLogger(__name__)

#: Longest the deadline loop waits before reading the earliest deadline again.
DEADLINE_CHECK_INTERVAL = 1.0


class Dispatcher:
    """Tasks out to executors (claims), results in, overdue attempts back."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    async def record_results(self, executor_id: str, results: Sequence[ReportedResult]) -> list[Disposition]:
        outcome = await self.ctx.write(
            functools.partial(self.ctx.queue.record, executor_id=executor_id, results=results, now=now_us()),
            "record results",
        )
        self.ctx.watches.tasks_changed(result.task_id for result in results)
        session = self.ctx.sessions.get(executor_id)
        if session is not None:
            session.last_seen = time.monotonic()
        for disposition in outcome.dispositions:
            if disposition is Disposition.ACCEPTED:
                self.ctx.stats.results_accepted += 1
            elif disposition is Disposition.DUPLICATE:
                self.ctx.stats.results_duplicate += 1
            else:
                self.ctx.stats.results_stale += 1
        self.ctx.observer.recorded(outcome)
        self.ctx.retry_alarm.request(outcome.next_retry_at)
        return outcome.dispositions

    async def dispatch_loop(self) -> None:
        while True:
            await self.ctx.dispatch_needed.wait()
            self.ctx.dispatch_needed.clear()
            wanting = [
                session
                for session in self.ctx.sessions
                if session.state is SessionState.LIVE
                and session.epoch == self.ctx.epoch
                and session.credits > 0
                and session.maybe_work
                and session.shards
            ]
            if not wanting:
                continue
            plan = [(s.executor_id, s.shards, s.task_kinds, s.credits) for s in wanting]
            claimed_at = now_us()
            claims = await self.ctx.write(
                functools.partial(self._claim_all, plan=plan, now=claimed_at), "claim"
            )
            orphaned: list[tuple[str, list[int]]] = []
            for session, (_id, _shards, _kinds, wanted), claimed in zip(wanting, plan, claims, strict=True):
                if len(claimed) < wanted:
                    session.maybe_work = False
                if not claimed:
                    continue
                if (
                    self.ctx.sessions.get(session.executor_id) is not session
                    or session.state is not SessionState.LIVE
                ):
                    orphaned.append((session.executor_id, [task.task_id for task in claimed]))
                    continue
                self.ctx.stats.tasks_claimed += len(claimed)
                self.ctx.observer.claimed(claimed, claimed_at)
                session.credits -= len(claimed)
                size = self.ctx.config.max_batch_size
                for start in range(0, len(claimed), size):
                    session.send(protocol.tasks_to_wire(claimed[start : start + size]))
                if session.credits > 0 and session.maybe_work:
                    self.ctx.dispatch_needed.set()
            if orphaned:
                await self._release(orphaned)

    def _claim_all(
        self, connection: Connection, plan: list[tuple[str, frozenset[int], frozenset[str], int]], now: int
    ) -> list[list[ClaimedTask]]:
        """Each executor's oldest tasks from its own shards; if those run dry, the oldest of any shard.

        Leased shards keep every executor busy with its own share in FIFO order; without
        the fallback, an executor whose shards happened to hash fewer workflows would idle
        while another's backlog waits (at 20,000 workflows on 10 executors that unevenness
        stretched the span by 8%). Taking another shard's task is safe: ownership and
        fencing are per task, and the shard's holder simply does not get it.
        """
        claims = []
        for executor_id, shards, kinds, wanted in plan:
            claimed = self.ctx.queue.claim(connection, executor_id, shards, kinds, wanted, now)
            if len(claimed) < wanted:
                claimed += self.ctx.queue.claim(
                    connection, executor_id, None, kinds, wanted - len(claimed), now
                )
            claims.append(claimed)
        return claims

    async def _release(self, orphaned: list[tuple[str, list[int]]]) -> None:
        """Give back tasks claimed for an executor that went away before they were sent."""

        def release(connection: Connection) -> None:
            for executor_id, ids in orphaned:
                holdings.release_unsent(connection, executor_id, ids)

        await self.ctx.write(release, "release")
        self.ctx.wake_all()

    async def retry_loop(self) -> None:
        """Offer work when a task's retry backoff ends, then wait for the next one."""
        while True:
            await self.ctx.retry_due.wait()
            self.ctx.retry_due.clear()
            self.ctx.wake_all()
            self.ctx.retry_alarm.request(
                await self.ctx.read(functools.partial(self.ctx.queue.earliest_delayed, now=now_us()))
            )

    async def deadline_loop(self) -> None:
        """Take back attempts past their start-to-close deadline (``tasks.deadline_at``).

        Level-triggered: each pass reads the earliest deadline from the database, so a
        pass that fails (the supervisor restarts the loop) loses nothing, and a deadline
        stamped by any claim is seen within DEADLINE_CHECK_INTERVAL without a wake-up.
        """
        while True:
            now = now_us()
            due = await self.ctx.read(deadlines.earliest_deadline)
            if due is not None and due <= now:
                outcome = await self.ctx.write(
                    functools.partial(
                        deadlines.expire_overdue,
                        dialect=self.ctx.database.dialect,
                        now=now,
                        default_timeout=self.ctx.config.default_task_timeout,
                        grace=self.ctx.config.task_deadline_grace,
                    ),
                    "expire deadlines",
                )
                self._deadlines_expired(outcome)
                if outcome.revoked:
                    continue  # more may be due: read again at once
            wait = DEADLINE_CHECK_INTERVAL if due is None else (due - now) / 1e6
            await asyncio.sleep(min(DEADLINE_CHECK_INTERVAL, max(0.01, wait)))

    def _deadlines_expired(self, outcome: ExpiryOutcome) -> None:
        if not outcome.revoked:
            return
        self.ctx.stats.deadlines_expired += len(outcome.revoked)
        log.warning(
            "%d attempt(s) passed their start-to-close deadline without a result: %d retried, %d failed "
            "after their last attempt (the executor's handler or call may be hung; see ExplainWorkflow)",
            len(outcome.revoked),
            outcome.retried,
            outcome.failed,
        )
        self.ctx.send_cancels(outcome.revoked, "the attempt passed its start-to-close deadline")
        self.ctx.watches.tasks_changed(claim.task_id for claim in outcome.revoked)
        self.ctx.retry_alarm.request(outcome.next_retry_at)
        self.ctx.wake_holders(outcome.shards)
