"""Advancing workflows: draining the replay queue (running workflow code off the writer) and
firing durable timers (``ctx.sleep``) when they are due.
"""

from __future__ import annotations

import functools
import logging

from sqlalchemy.engine import Connection

from .clock import now_us
from .context import EngineContext
from .model import WorkflowStatus
from .replay_runner import ReplayCall
from .store import Timers, deadlines
from .store.children import Children
from .store.replays import ReplayBatchOutcome

log = logging.getLogger(__name__)


class ReplayService:
    """The replay loop and the timer loop."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    async def replay_loop(self) -> None:
        limit = self.ctx.config.replay_batch_size
        while True:
            await self.ctx.replay_needed.wait()
            self.ctx.replay_needed.clear()
            while True:
                outcome = await self.replay_batch(limit)
                self.ctx.stats.replays += outcome.replayed
                self.ctx.observer.replayed(outcome)
                for status, count in outcome.finished.items():
                    self.ctx.count_finished(status, count)
                self.ctx.wake_holders(outcome.task_shards)
                self.ctx.timer_alarm.request(outcome.next_wake_at)
                if outcome.taken + outcome.left < limit:
                    if outcome.left or outcome.requeued:
                        self.ctx.replay_needed.set()  # changed while replaying: replay the new state
                    break

    async def replay_batch(self, limit: int) -> ReplayBatchOutcome:
        """Read what is due, run the workflow code off the writer, apply the outcomes in a short write."""
        cache = self.ctx.replays.cache
        if cache.forgetting():  # runs of cancelled workflows: free them now, not at the next lookup
            await self.ctx.replay_runner.run([ReplayCall("", self._drop_forgotten, traced=False)])
        due = await self.ctx.read(lambda c: self.ctx.replays.due(c, limit), snapshot=True)
        if not due:
            return ReplayBatchOutcome()
        now = now_us()
        calls = [
            ReplayCall(
                item.workflow_id,
                functools.partial(self.ctx.replays.replay_one, item, now),
                item.trace_context,
            )
            for item in due
            if item.replayable
        ]
        results = await self.ctx.replay_runner.run(calls)
        outcomes = {call.workflow_id: result for call, result in zip(calls, results, strict=True)}
        # Workflows that withdraw steps (a lost race, a timeout) or finish may cancel running steps,
        # whose executors must be told to stop: read their claims before the write, as cancels do.
        cancelling = [
            workflow_id
            for workflow_id, result in outcomes.items()
            if result is not None and (result.withdrawn or result.status is not WorkflowStatus.RUNNING)
        ]

        def claims(connection: Connection) -> list[deadlines.Claim]:
            # Their descendants too: a child whose parent finished or stopped waiting is cancelled.
            family = cancelling + Children.running_descendants(connection, cancelling) if cancelling else []
            return [
                claim
                for workflow_id in family
                for claim in deadlines.claimed_tasks(connection, workflow_id=workflow_id)
            ]

        written = {workflow_id: result for workflow_id, result in outcomes.items() if result is not None}
        try:
            outcome = await self.ctx.write_revoking(
                lambda c: self.ctx.replays.apply(c, due, written, now),
                "replay",
                "the workflow no longer waits for this step (it lost a race or timed out, or the workflow "
                "finished)",
                claims,
            )
        except BaseException:
            self.ctx.replays.cache.forget(outcomes)  # nothing was written: the runs are ahead of it
            raise
        # A run the write did not take (the workflow changed, finished or was cleared) is out of step.
        self.ctx.replays.cache.forget(set(outcomes) - outcome.applied)
        self.ctx.watches.changed(item.workflow_id for item in due)
        return outcome

    def _drop_forgotten(self) -> None:
        self.ctx.replays.cache.drop_forgotten()

    async def timer_loop(self) -> None:
        while True:
            await self.ctx.timer_due.wait()
            self.ctx.timer_due.clear()
            fired, _replays = await self.ctx.write(
                lambda c: self.ctx.timers.fire_due(c, now_us()), "fire timers"
            )
            if fired:
                self.ctx.timer_due.set()  # there may be more due than one batch held
                continue
            self.ctx.timer_alarm.request(await self.ctx.read(Timers.next_wake_at))
