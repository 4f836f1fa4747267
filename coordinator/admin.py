"""Operator actions (AdminService): force-failing tasks, clearing queues, bulk cancels, Diagnose.

The epoch bump is the membership's (:meth:`Membership.bump_epoch`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Collection
from typing import Any

from sqlalchemy.engine import Connection

from conveyor.errors import InvalidArgument

from . import validation
from .clock import now_us
from .context import EngineContext
from .model import WorkflowStatus
from .reports import DiagnoseReport, ExecutorView
from .store import ShardDepth, Workflows, WorkflowSelection, diagnosis, holdings

log = logging.getLogger(__name__)

#: Workflows cancelled per write transaction by CancelWorkflows, so other writes interleave.
BULK_CANCEL_BATCH = 500
#: Workflow ids a CancelWorkflows answer lists, for the operator to check the filter.
BULK_CANCEL_SAMPLE = 20


class AdminOperations:
    """What an operator may do to a running coordinator."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    async def fail_pending_tasks(self, shards: Collection[int] | None, limit: int, reason: str) -> int:
        self._check_shards(shards)
        validation.reason(reason)
        failed, _replays = await self.ctx.write_revoking(
            functools.partial(
                self.ctx.queue.fail_pending,
                shards=shards,
                limit=limit,
                reason=reason or "force-failed by an operator (FailPendingTasks)",
                now=now_us(),
            ),
            "fail pending tasks",
            "the task was force-failed by an operator (FailPendingTasks)",
        )
        self.ctx.watches.all_changed()
        log.warning("operator force-failed %d pending task(s) on %s", failed, _describe_shards(shards))
        return failed

    async def clear_replay_queue(
        self, shards: Collection[int] | None, limit: int, reason: str
    ) -> tuple[int, int]:
        self._check_shards(shards)
        validation.reason(reason)
        cleared, cancelled = await self.ctx.write(
            functools.partial(
                self.ctx.replays.clear,
                shards=shards,
                limit=limit,
                reason=reason or "replay queue cleared by an operator",
                now=now_us(),
            ),
            "clear replay queue",
        )
        self.ctx.count_finished(WorkflowStatus.CANCELLED, cancelled)
        self.ctx.watches.all_changed()
        log.warning("operator cleared %d replay-queue entries on %s", cleared, _describe_shards(shards))
        return cleared, cancelled

    async def clear_task_queue(
        self, shards: Collection[int] | None, limit: int, reason: str
    ) -> tuple[int, int]:
        self._check_shards(shards)
        validation.reason(reason)
        cleared, cancelled = await self.ctx.write_revoking(
            functools.partial(
                self.ctx.queue.clear,
                shards=shards,
                limit=limit,
                reason=reason or "task queue cleared by an operator",
                now=now_us(),
            ),
            "clear task queue",
            "the task queue was cleared by an operator (ClearTaskQueue)",
        )
        self.ctx.count_finished(WorkflowStatus.CANCELLED, cancelled)
        self.ctx.watches.all_changed()
        log.warning("operator cleared %d task(s) on %s", cleared, _describe_shards(shards))
        return cleared, cancelled

    async def cancel_workflows(
        self, selection: WorkflowSelection, limit: int, dry_run: bool, reason: str
    ) -> tuple[int, int, list[str]]:
        """Cancel the running workflows ``selection`` holds, oldest first, in batches.

        Returns (matched, cancelled, the oldest matched ids). Only workflows started
        before the call count, so a steady stream of new starts cannot keep it going.
        """
        self._check_shards(selection.shards)
        validation.reason(reason)
        if limit < 0:
            raise InvalidArgument(f"limit must not be negative (0 means no limit), not {limit}")
        started_before = now_us()
        if selection.started_before is not None:
            started_before = min(started_before, selection.started_before)
        selection = WorkflowSelection(
            selection.shards, selection.name, started_before, selection.started_after
        )
        matched, sample = await self.ctx.read(
            functools.partial(
                Workflows.count_selected, selection=selection, limit=limit, sample_size=BULK_CANCEL_SAMPLE
            ),
            snapshot=True,
        )
        if dry_run or not matched:
            return matched, 0, sample
        cancelled = 0
        while limit == 0 or cancelled < limit:
            batch = BULK_CANCEL_BATCH if limit == 0 else min(BULK_CANCEL_BATCH, limit - cancelled)
            ids = await self.ctx.write_revoking(
                functools.partial(
                    Workflows.cancel_selected,
                    selection=selection,
                    limit=batch,
                    reason=reason or "cancelled by an operator (CancelWorkflows)",
                    now=now_us(),
                ),
                "cancel workflows",
                "the workflow was cancelled by an operator (CancelWorkflows)",
            )
            cancelled += len(ids)
            self.ctx.count_finished(WorkflowStatus.CANCELLED, len(ids))
            if len(ids) < batch:
                break
        log.warning(
            "operator cancelled %d running workflow(s) matching name=%s on %s",
            cancelled,
            selection.name or "any",
            _describe_shards(selection.shards),
        )
        return matched, cancelled, sample

    def _check_shards(self, shards: Collection[int] | None) -> None:
        for shard in shards or ():
            if not 0 <= shard < self.ctx.shard_count:
                raise InvalidArgument(
                    f"shard {shard} does not exist; shards are 0..{self.ctx.shard_count - 1}"
                )

    async def diagnose(self, max_violations: int, *, check_invariants: bool = True) -> DiagnoseReport:
        """Queue depths, executors and workflow counts; the invariant checks (the costly part) too,
        unless ``check_invariants`` is false."""
        now = now_us()
        names = self.ctx.registry.names()

        def query(connection: Connection) -> tuple[Any, ...]:
            claimed = holdings.held_per_executor(connection)
            return (
                diagnosis.shard_depths(connection, now),
                (
                    diagnosis.invariant_violations(connection, names, max_violations or 20)
                    if check_invariants
                    else []
                ),
                Workflows.count_by_status(connection),
                claimed,
            )

        depths, violations, by_status, claimed = await self.ctx.read(query, snapshot=True)
        shards = [
            depths.get(shard) or ShardDepth(shard, 0, 0, 0, None, 0) for shard in range(self.ctx.shard_count)
        ]
        monotonic_now = time.monotonic()
        executors = [
            ExecutorView(session, claimed.get(session.executor_id, 0), monotonic_now - session.last_seen)
            for session in sorted(self.ctx.sessions, key=lambda s: s.executor_id)
        ]
        return DiagnoseReport(
            epoch=self.ctx.epoch,
            shard_count=self.ctx.shard_count,
            shards=shards,
            replay_queue_depth=sum(depth.replay_depth for depth in shards),
            executors=executors,
            violations=violations,
            workflows_by_status=by_status,
            rejected_stale_results=self.ctx.stats.results_stale,
            generated_at=now,
        )


def _describe_shards(shards: Collection[int] | None) -> str:
    return "all shards" if shards is None else "shard(s) " + ",".join(map(str, sorted(shards)))
