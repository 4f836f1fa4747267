"""Draining the replay queue (transaction 3 of the brief).

One unit takes the oldest entries of the replay queue, loads their workflows and
journals, replays each (:func:`coordinator.replay.replay`), and in the same
transaction writes what the replays decided: new steps and their tasks, finished
workflows, and the deletion of the entries. A failed transaction leaves the entries
in place, so the replay is simply tried again.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from conveyor import logs
from conveyor.workflow import WorkflowRegistry

from ..model import EXECUTOR_STEP_KINDS, StepKind, StepStatus, WorkflowStatus
from ..replay import JournalEntry, NewStep, ReplayOutcome, replay
from .dialect import Dialect
from .journal import cancel_workflows
from .schema import replay_queue, steps, tasks, workflows

log = logging.getLogger(__name__)


@dataclass
class ReplayBatchOutcome:
    replayed: int = 0
    #: Entries taken off the queue, replayed or not (finished or busy workflows).
    taken: int = 0
    finished: dict[WorkflowStatus, int] = field(default_factory=dict)
    #: Shards that received new tasks: their executors have work.
    task_shards: set[int] = field(default_factory=set)
    #: The earliest timer a new sleep step set.
    next_wake_at: int | None = None
    #: Seconds each replayed workflow waited in the replay queue: the gap between its steps.
    replay_delays: list[float] = field(default_factory=list)


_update_progress = (
    update(workflows)
    .where(workflows.c.id == bindparam("workflow_id"))
    .values(
        step_count=bindparam("step_count"),
        status=bindparam("status"),
        result=bindparam("result"),
        error=bindparam("error"),
        completed_at=bindparam("completed_at"),
    )
)


class ReplayQueue:
    """Write units over the replay queue."""

    def __init__(self, dialect: Dialect, registry: WorkflowRegistry) -> None:
        self._dialect = dialect
        self._registry = registry
        self._rng = random.Random()

    def replay_batch(self, connection: Connection, limit: int, now: int) -> ReplayBatchOutcome:
        outcome = ReplayBatchOutcome()
        # Entries of workflows this coordinator has no code for stay queued (and are
        # reported by Diagnose) rather than blocking the head of the queue.
        due = connection.execute(
            select(
                workflows.c.id,
                workflows.c.name,
                workflows.c.args,
                workflows.c.status,
                workflows.c.shard,
                workflows.c.created_at,
                replay_queue.c.enqueued_at,
            )
            .join(replay_queue, replay_queue.c.workflow_id == workflows.c.id)
            # Not through the name index: the plan must walk the replay queue's FIFO index and
            # stop at the limit, not visit every workflow ever started (which SQLite chose,
            # making each batch cost as much as the whole history).
            .where(self._dialect.unindexed(workflows.c.name).in_(self._registry.names()))
            .order_by(replay_queue.c.workflow_created_at, replay_queue.c.workflow_id)
            .limit(limit)
            .with_for_update(of=replay_queue, skip_locked=True)
        ).all()
        if not due:
            return outcome
        ids = [row.id for row in due]
        journals = self._load_journals(connection, ids)
        new_steps: list[tuple[str, int, int, NewStep]] = []  # (workflow id, shard, created_at, step)
        progress: list[dict[str, object]] = []
        for row in due:
            journal = journals.get(row.id, [])
            if row.status != WorkflowStatus.RUNNING or any(e.status is StepStatus.RUNNING for e in journal):
                continue  # finished, or waiting on a step whose result will enqueue it again
            result = self._replay_one(row, journal, now)
            outcome.replayed += 1
            outcome.replay_delays.append(max(0, now - row.enqueued_at) / 1e6)
            for step in result.new_steps:
                new_steps.append((row.id, row.shard, row.created_at, step))
            finished = result.status is not WorkflowStatus.RUNNING
            if finished:
                outcome.finished[result.status] = outcome.finished.get(result.status, 0) + 1
            progress.append(
                {
                    "workflow_id": row.id,
                    "step_count": len(journal) + len(result.new_steps),
                    "status": result.status,
                    "result": result.result_json,
                    "error": result.error,
                    "completed_at": now if finished else None,
                }
            )
        self._start_steps(connection, new_steps, now, outcome)
        if progress:
            connection.execute(_update_progress, progress)
        connection.execute(delete(replay_queue).where(replay_queue.c.workflow_id.in_(ids)))
        outcome.taken = len(ids)
        return outcome

    def _replay_one(self, row: object, journal: list[JournalEntry], now: int) -> ReplayOutcome:
        definition = self._registry.get(row.name)  # type: ignore[attr-defined]
        assert definition is not None  # the query only selects registered names
        try:
            args = json.loads(row.args) if row.args else []  # type: ignore[attr-defined]
            return replay(definition, row.id, args, journal, now_us=now, rng=self._rng)  # type: ignore[attr-defined]
        except Exception as error:  # a bug in replay itself must not wedge the queue
            workflow_id = row.id  # type: ignore[attr-defined]
            fields = logs.fields(workflow_id=workflow_id)
            log.exception("replaying workflow %s failed unexpectedly", workflow_id, extra=fields)
            return ReplayOutcome(WorkflowStatus.FAILED, error=f"internal error during replay: {error!r}")

    @staticmethod
    def _load_journals(connection: Connection, workflow_ids: list[str]) -> dict[str, list[JournalEntry]]:
        journals: dict[str, list[JournalEntry]] = defaultdict(list)
        for row in connection.execute(
            select(
                steps.c.workflow_id,
                steps.c.number,
                steps.c.kind,
                steps.c.name,
                steps.c.args,
                steps.c.status,
                steps.c.result,
                steps.c.error,
            )
            .where(steps.c.workflow_id.in_(workflow_ids))
            .order_by(steps.c.workflow_id, steps.c.number)
        ):
            journals[row.workflow_id].append(
                JournalEntry(
                    row.number,
                    StepKind(row.kind),
                    row.name,
                    row.args,
                    StepStatus(row.status),
                    row.result,
                    row.error,
                )
            )
        return journals

    def _start_steps(
        self,
        connection: Connection,
        new_steps: list[tuple[str, int, int, NewStep]],
        now: int,
        outcome: ReplayBatchOutcome,
    ) -> None:
        """Insert the steps replays asked for and enqueue the tasks of LLM and task steps (transaction 1)."""
        if not new_steps:
            return
        step_rows = []
        for workflow_id, _shard, _created_at, step in new_steps:
            complete = step.result_json is not None
            step_rows.append(
                {
                    "workflow_id": workflow_id,
                    "number": step.number,
                    "kind": step.kind,
                    "name": step.name,
                    "args": step.args_json,
                    "status": StepStatus.COMPLETED if complete else StepStatus.RUNNING,
                    "result": step.result_json,
                    "attempt": 0,
                    "created_at": now,
                    "completed_at": now if complete else None,
                    "wake_at": step.wake_at_us,
                }
            )
            if step.wake_at_us is not None:
                outcome.next_wake_at = min(outcome.next_wake_at or step.wake_at_us, step.wake_at_us)
        step_ids = (
            connection.execute(insert(steps).returning(steps.c.id, sort_by_parameter_order=True), step_rows)
            .scalars()
            .all()
        )
        task_rows = []
        for step_id, (workflow_id, shard, created_at, step) in zip(step_ids, new_steps, strict=True):
            if step.kind not in EXECUTOR_STEP_KINDS:
                continue
            assert step.retry is not None and step.task_kind is not None
            task_rows.append(
                {
                    "id": step_id,
                    "shard": shard,
                    "workflow_created_at": created_at,
                    "workflow_id": workflow_id,
                    "kind": step.task_kind,
                    "attempt": 1,
                    "max_attempts": step.retry.max_attempts,
                    "initial_backoff": step.retry.initial_backoff,
                    "backoff_multiplier": step.retry.multiplier,
                    "max_backoff": step.retry.max_backoff,
                    "rate_limit_waits": 0,
                    "max_rate_limit_waits": step.retry.max_rate_limit_waits,
                    "timeout": step.timeout,
                    "available_at": now,
                    "fencing_token": 0,
                }
            )
            outcome.task_shards.add(shard)
        if task_rows:
            connection.execute(insert(tasks), task_rows)

    def clear(
        self, connection: Connection, shards: Collection[int] | None, limit: int, reason: str, now: int
    ) -> tuple[int, int]:
        """Remove entries, cancelling their workflows; returns (entries, workflows cancelled)."""
        query = select(replay_queue.c.workflow_id)
        if shards is not None:
            query = query.where(replay_queue.c.shard.in_(list(shards)))
        query = query.order_by(replay_queue.c.workflow_created_at, replay_queue.c.workflow_id)
        if limit > 0:
            query = query.limit(limit)
        ids = list(connection.execute(query).scalars())
        if not ids:
            return 0, 0
        cleared = connection.execute(delete(replay_queue).where(replay_queue.c.workflow_id.in_(ids))).rowcount
        return cleared, len(cancel_workflows(connection, ids, reason, now))
