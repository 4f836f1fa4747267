"""Draining the replay queue (transaction 3 of the brief), in three steps.

1. :meth:`ReplayQueue.due` reads the oldest entries of the replay queue with their
   workflows and journals (a read, off the writer).
2. :meth:`ReplayQueue.replay_one` replays one of them (:func:`conveyor.coordinator.replay.replay`);
   the engine runs it on the replay runner's thread, never on the writer, since it is
   user code (:mod:`conveyor.coordinator.replay_runner`).
3. :meth:`ReplayQueue.apply` writes what the replays decided in one short write unit:
   new steps and their tasks, the activation that delivered each outcome, the steps the
   workflow withdrew (cancelled, with their tasks), finished workflows (and whatever they
   left running, cancelled), and the deletion of the entries. It re-checks each workflow
   first: an entry whose workflow took steps or ran an activation since step 1 is left for
   the next pass, so nothing is applied over a state it was not computed from. A step that
   merely finished since step 1 changes nothing the replay saw: it is delivered in the next
   activation, and its workflow keeps its entry.

One workflow's outcome that cannot be written (a value the database refuses, a bug)
fails that workflow, with the reason, instead of the batch: a failed batch would be
retried from the same oldest entries for ever and stall every other workflow.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from conveyor import logs
from conveyor.workflow import WorkflowRegistry

from .. import validation
from ..model import EXECUTOR_STEP_KINDS, StepKind, StepStatus, WorkflowStatus
from ..replay import INSTANT_KINDS, SETTLED, JournalEntry, NewStep, ReplayOutcome, WorkflowRun
from ..workflow_cache import WorkflowCache
from .children import Children, ChildStart
from .dialect import Dialect, is_transient
from .journal import cancel_steps, cancel_workflows, settle_family
from .payloads import compact_step_args
from .schema import FIFO_KEY, replay_queue, steps, tasks, workflows
from .signals import deliver_buffered

log = logging.getLogger(__name__)


@dataclass
class ReplayBatchOutcome:
    replayed: int = 0
    #: Entries taken off the queue, replayed or not (finished or busy workflows).
    taken: int = 0
    #: Entries left in the queue because their workflow changed after it was read.
    left: int = 0
    finished: dict[WorkflowStatus, int] = field(default_factory=dict)
    #: Shards that received new tasks: their executors have work.
    task_shards: set[int] = field(default_factory=set)
    #: The earliest timer a new sleep step set.
    next_wake_at: int | None = None
    #: Seconds each replayed workflow waited in the replay queue: the gap between its steps.
    replay_delays: list[float] = field(default_factory=list)
    #: Steps cancelled because their workflow withdrew them or finished without them: the
    #: executors holding their tasks must be told to stop (see ``revoked_since``).
    steps_cancelled: int = 0
    #: Workflows whose replay outcome was written (the workflow cache keeps only their runs).
    applied: set[str] = field(default_factory=set)
    #: Workflows queued again at once: a signal wait they started found its signal buffered.
    requeued: int = 0

    def merge(self, other: ReplayBatchOutcome) -> None:
        self.replayed += other.replayed
        self.taken += other.taken
        self.left += other.left
        for status, count in other.finished.items():
            self.finished[status] = self.finished.get(status, 0) + count
        self.task_shards |= other.task_shards
        if other.next_wake_at is not None:
            self.next_wake_at = min(self.next_wake_at or other.next_wake_at, other.next_wake_at)
        self.replay_delays.extend(other.replay_delays)
        self.steps_cancelled += other.steps_cancelled
        self.applied |= other.applied
        self.requeued += other.requeued


@dataclass(frozen=True)
class DueReplay:
    """A replay-queue entry as read, with what its replay needs."""

    workflow_id: str
    name: str
    args: str | None
    status: WorkflowStatus
    shard: int
    created_at: int
    enqueued_at: int
    journal: tuple[JournalEntry, ...]
    #: The workflow's W3C Trace Context as stored (conveyor.tracing.encode), for the replay's span.
    trace_context: str | None = None
    #: As read: the apply re-checks both (None: a workflow from before activations were recorded).
    step_count: int = 0
    activations: int | None = 0
    #: ``journal`` holds only the outcomes to deliver: the workflow cache holds a run in step.
    partial: bool = False
    #: The FIFO key of the workflow's tasks: its root's creation time (``created_at`` for a root).
    fifo_key: int = 0

    @property
    def replayable(self) -> bool:
        """Running (whatever its steps do: it advances on any completion); otherwise the entry is
        only removed."""
        return self.status is WorkflowStatus.RUNNING


_journal_columns = (
    steps.c.workflow_id,
    steps.c.number,
    steps.c.kind,
    steps.c.name,
    steps.c.args,
    steps.c.status,
    steps.c.result,
    steps.c.error,
    steps.c.delivered_in,
    steps.c.completed_at,
    steps.c.args_digest,
)


def _journal_entry(row: Any) -> JournalEntry:
    """A row selected with ``_journal_columns``, as replay reads it."""
    return JournalEntry(
        row.number,
        StepKind(row.kind),
        row.name,
        row.args,
        StepStatus(row.status),
        row.result,
        row.error,
        row.delivered_in,
        row.completed_at,
        row.args_digest,
    )


_record_delivery = (
    update(steps)
    .where(
        steps.c.workflow_id == bindparam("delivered_workflow_id"), steps.c.number == bindparam("step_number")
    )
    .values(delivered_in=bindparam("activation"))
)

_update_progress = (
    update(workflows)
    .where(workflows.c.id == bindparam("workflow_id"))
    .values(
        step_count=bindparam("step_count"),
        activations=bindparam("activations"),
        status=bindparam("status"),
        result=bindparam("result"),
        error=bindparam("error"),
        completed_at=bindparam("completed_at"),
    )
)


class ReplayQueue:
    """Write units over the replay queue."""

    def __init__(
        self,
        dialect: Dialect,
        registry: WorkflowRegistry,
        *,
        children: Children,
        max_payload_bytes: int,
        cache: WorkflowCache | None = None,
    ) -> None:
        self._dialect = dialect
        self._registry = registry
        self._children = children
        self._max_payload_bytes = max_payload_bytes
        self._rng = random.Random()
        self.cache = cache if cache is not None else WorkflowCache()

    def due(self, connection: Connection, limit: int) -> list[DueReplay]:
        """The oldest ``limit`` entries of workflows this coordinator has code for, with journals."""
        # Entries of workflows this coordinator has no code for stay queued (and are
        # reported by Diagnose) rather than blocking the head of the queue.
        rows = connection.execute(
            select(
                workflows.c.id,
                workflows.c.name,
                workflows.c.args,
                workflows.c.status,
                workflows.c.shard,
                workflows.c.created_at,
                replay_queue.c.enqueued_at,
                workflows.c.trace_context,
                workflows.c.step_count,
                workflows.c.activations,
                FIFO_KEY.label("fifo_key"),
            )
            .join(replay_queue, replay_queue.c.workflow_id == workflows.c.id)
            # Not through the name index: the plan must walk the replay queue's FIFO index and
            # stop at the limit, not visit every workflow ever started (which SQLite chose,
            # making each batch cost as much as the whole history).
            .where(self._dialect.unindexed(workflows.c.name).in_(self._registry.names()))
            .order_by(replay_queue.c.workflow_created_at, replay_queue.c.workflow_id)
            .limit(limit)
        ).all()
        if not rows:
            return []
        # A workflow whose run the cache holds, in step with the database, needs only the outcomes
        # it has not been handed yet (through the partial index), not its whole journal.
        cached = {row.id for row in rows if self.cache.expected(row.id) == (row.step_count, row.activations)}
        journals = self.load_journals(connection, [row.id for row in rows if row.id not in cached])
        journals.update(self._load_undelivered(connection, list(cached)))
        return [
            DueReplay(
                row.id,
                row.name,
                row.args,
                WorkflowStatus(row.status),
                row.shard,
                row.created_at,
                row.enqueued_at,
                tuple(journals.get(row.id, ())),
                row.trace_context,
                row.step_count,
                row.activations,
                row.id in cached,
                row.fifo_key,
            )
            for row in rows
        ]

    def replay_one(self, due: DueReplay, now: int) -> ReplayOutcome | None:
        """Advance one due workflow: its cached run if the cache holds it in step, else a replay from
        scratch (runs workflow code: call it on the replay runner's thread). None: the cache lost the
        run ``due`` was read for (only its undelivered outcomes were read); the next pass reads it all.
        """
        definition = self._registry.get(due.name)
        if definition is None:  # ``due`` only selects registered names
            return ReplayOutcome(WorkflowStatus.FAILED, error=f"no workflow named {due.name!r} is registered")
        run = self.cache.take(due.workflow_id, due.step_count, due.activations)
        if run is None and due.partial:
            return None
        try:
            if run is not None:
                result = run.advance(due.journal, now)
            else:
                args = json.loads(due.args) if due.args else []
                run = WorkflowRun(
                    definition,
                    due.workflow_id,
                    args,
                    started_at_us=due.created_at,
                    rng=self._rng,
                    workflows=self._registry,
                )
                result = run.resume(due.journal, due.activations, now)
        except Exception as error:  # a bug in replay itself must not wedge the queue
            fields = logs.fields(workflow_id=due.workflow_id)
            log.exception("replaying workflow %s failed unexpectedly", due.workflow_id, extra=fields)
            if run is not None:
                run.close()
            return ReplayOutcome(WorkflowStatus.FAILED, error=f"internal error during replay: {error!r}")
        if result.status is WorkflowStatus.RUNNING:
            # What the code was handed and asked for: an estimate of what it may hold on to.
            run.held_bytes += sum(
                len(entry.result_json or "") + (0 if due.partial else len(entry.args_json))
                for entry in due.journal
            )
            # Arguments count what was new in them: an agent loop resends its whole conversation
            # at every step, but holds it once (counting it whole made the estimate quadratic in
            # the turns, and the cache dropped loops of a few thousand turns as too large).
            run.held_bytes += sum(
                len(step.args_json) if step.encoded is None else step.encoded.fresh
                for step in result.new_steps
            )
            self.cache.put(run, run.held_bytes + run.memo_bytes)
        else:
            run.close()
        if result.result_json is not None:
            size = len(result.result_json.encode())
            if size > self._max_payload_bytes:
                # Held to the same bound as arguments and step results: every get and list returns it.
                return ReplayOutcome(
                    WorkflowStatus.FAILED,
                    new_steps=result.new_steps,
                    error=f"the workflow returned a result of {size} bytes; the limit is "
                    f"{self._max_payload_bytes} bytes (--max-payload-bytes). Return a smaller value, "
                    "or store large data elsewhere and return a reference to it",
                )
        return result

    def apply(
        self,
        connection: Connection,
        batch: Sequence[DueReplay],
        outcomes: Mapping[str, ReplayOutcome],
        now: int,
    ) -> ReplayBatchOutcome:
        """Write the replays' outcomes, each only if its workflow is as it was read."""
        outcome = ReplayBatchOutcome()
        if not batch:
            return outcome
        ids = [due.workflow_id for due in batch]
        queued = set(
            connection.execute(
                select(replay_queue.c.workflow_id).where(replay_queue.c.workflow_id.in_(ids))
            ).scalars()
        )
        current = {
            row.id: row
            for row in connection.execute(
                select(
                    workflows.c.id, workflows.c.status, workflows.c.step_count, workflows.c.activations
                ).where(workflows.c.id.in_(ids))
            )
        }
        done: list[str] = []
        ready: list[tuple[DueReplay, ReplayOutcome]] = []
        for due in batch:
            if due.workflow_id not in queued:
                continue  # cleared meanwhile
            row = current.get(due.workflow_id)
            if row is None or row.status != WorkflowStatus.RUNNING:
                done.append(due.workflow_id)  # finished meanwhile: nothing to advance
                continue
            result = outcomes.get(due.workflow_id)
            if result is None or (row.step_count, row.activations) != (due.step_count, due.activations):
                outcome.left += 1  # changed since it was read: the next pass replays the new state
                continue
            ready.append((due, result))
        outcome.applied = {due.workflow_id for due, _ in ready}
        if done:
            connection.execute(delete(replay_queue).where(replay_queue.c.workflow_id.in_(done)))
            outcome.taken += len(done)
        if not ready:
            return outcome
        # Fast path: everything in one go. If that fails, find the workflow(s) at fault one by one.
        savepoint = connection.begin_nested()
        try:
            written = self._write(connection, ready, now)
        except Exception as error:
            savepoint.rollback()
            if is_transient(error):
                raise
        else:
            savepoint.commit()
            outcome.merge(written)
            return outcome
        for due, result in ready:
            savepoint = connection.begin_nested()
            try:
                written = self._write(connection, [(due, result)], now)
            except Exception as error:
                savepoint.rollback()
                if is_transient(error):
                    raise
                written = self._fail(connection, due, error, now)
                outcome.applied.discard(due.workflow_id)  # failed instead: its run is of no use
            else:
                savepoint.commit()
            outcome.merge(written)
        return outcome

    def _write(
        self, connection: Connection, ready: Sequence[tuple[DueReplay, ReplayOutcome]], now: int
    ) -> ReplayBatchOutcome:
        outcome = ReplayBatchOutcome()
        new_steps: list[tuple[str, int, int, NewStep]] = []  # (workflow id, shard, FIFO key, step)
        progress: list[dict[str, object]] = []
        deliveries: list[dict[str, object]] = []
        withdrawn: dict[str, set[int]] = {}
        finished_ids: list[str] = []
        for due, result in ready:
            outcome.replayed += 1
            outcome.replay_delays.append(max(0, now - due.enqueued_at) / 1e6)
            for step in result.new_steps:
                new_steps.append((due.workflow_id, due.shard, due.fifo_key, step))
            deliveries += [
                {"delivered_workflow_id": due.workflow_id, "step_number": number, "activation": activation}
                for number, activation in result.delivered
            ]
            if result.withdrawn:
                withdrawn[due.workflow_id] = set(result.withdrawn)
            finished = result.status is not WorkflowStatus.RUNNING
            if finished:
                outcome.finished[result.status] = outcome.finished.get(result.status, 0) + 1
                finished_ids.append(due.workflow_id)
            progress.append(
                {
                    "workflow_id": due.workflow_id,
                    "step_count": due.step_count + len(result.new_steps),
                    "activations": result.activations if result.activations is not None else due.activations,
                    "status": result.status,
                    "result": result.result_json,
                    "error": result.error,
                    "completed_at": now if finished else None,
                }
            )
        self._start_steps(connection, new_steps, now, outcome)
        if deliveries:
            connection.execute(_record_delivery, deliveries)
        connection.execute(_update_progress, progress)
        # After the progress: a child in this batch whose parent withdrew its step stays cancelled.
        steps_cancelled, children_cancelled = self._cancel_left_behind(
            connection, withdrawn, finished_ids, now
        )
        outcome.steps_cancelled += steps_cancelled
        ids = [due.workflow_id for due, _ in ready]
        # A step that finished after the read is delivered in the next activation: its entry stays.
        still_due = self._with_undelivered(connection, [i for i in ids if i not in set(finished_ids)])
        connection.execute(
            delete(replay_queue).where(replay_queue.c.workflow_id.in_([i for i in ids if i not in still_due]))
        )
        outcome.taken += len(ids) - len(still_due)
        outcome.left += len(still_due)
        orphans = children_cancelled + len(settle_family(connection, finished_ids, now))
        if orphans:  # children cancelled because their parent finished
            outcome.finished[WorkflowStatus.CANCELLED] = (
                outcome.finished.get(WorkflowStatus.CANCELLED, 0) + orphans
            )
        # After the delete: a wait that finds its signal already sent enqueues its workflow again.
        waits = {workflow_id for workflow_id, _, _, step in new_steps if step.kind is StepKind.SIGNAL}
        outcome.requeued += len(deliver_buffered(connection, self._dialect, waits, now))
        return outcome

    @staticmethod
    def _cancel_left_behind(
        connection: Connection, withdrawn: Mapping[str, set[int]], finished: Sequence[str], now: int
    ) -> tuple[int, int]:
        """Cancel the running steps each workflow withdrew, and every running step of the finished
        ones, with the child workflows of their child steps; returns how many steps (their executors
        are told to stop by the caller) and how many workflows were cancelled."""
        ids = list(withdrawn) + list(finished)
        if not ids:
            return 0, 0
        running = connection.execute(
            select(steps.c.id, steps.c.workflow_id, steps.c.number).where(
                steps.c.workflow_id.in_(ids), steps.c.status == StepStatus.RUNNING
            )
        ).all()
        finished_set = set(finished)
        withdrawn_ids = [
            row.id
            for row in running
            if row.workflow_id not in finished_set and row.number in withdrawn[row.workflow_id]
        ]
        left_ids = [row.id for row in running if row.workflow_id in finished_set]
        children = cancel_steps(
            connection,
            withdrawn_ids,
            "cancelled by the workflow code (it stopped waiting for it)",
            now,
            children_reason="its parent workflow stopped waiting for it",
        )
        children += cancel_steps(
            connection,
            left_ids,
            "cancelled: the workflow finished without waiting for it",
            now,
            children_reason="its parent workflow finished",
        )
        return len(withdrawn_ids) + len(left_ids), len(children)

    @staticmethod
    def _with_undelivered(connection: Connection, workflow_ids: Sequence[str]) -> set[str]:
        """The workflows among ``workflow_ids`` with a finished step whose outcome is still to deliver."""
        if not workflow_ids:
            return set()
        return set(
            connection.execute(
                select(steps.c.workflow_id)
                .where(
                    steps.c.workflow_id.in_(list(workflow_ids)),
                    # Spelled as the partial index's predicate, which holds only such steps and running ones.
                    steps.c.delivered_in.is_(None),
                    steps.c.status != StepStatus.RUNNING,
                    steps.c.kind.not_in([kind.value for kind in INSTANT_KINDS]),
                )
                .distinct()
            ).scalars()
        )

    def _fail(self, connection: Connection, due: DueReplay, error: Exception, now: int) -> ReplayBatchOutcome:
        """The outcome of ``due`` could not be stored: fail its workflow, saying why, instead."""
        fields = logs.fields(workflow_id=due.workflow_id)
        log.error(
            "could not store the outcome of replaying workflow %s (%s); failing the workflow",
            due.workflow_id,
            error,
            extra=fields,
        )
        message = validation.storable_text(
            f"the coordinator could not store what this workflow's code produced "
            f"({type(error).__name__}: {error})"[:4000]
        )
        cancelled, children_cancelled = self._cancel_left_behind(connection, {}, [due.workflow_id], now)
        connection.execute(
            _update_progress,
            [
                {
                    "workflow_id": due.workflow_id,
                    "step_count": due.step_count,
                    "activations": due.activations,
                    "status": WorkflowStatus.FAILED,
                    "result": None,
                    "error": message,
                    "completed_at": now,
                }
            ],
        )
        connection.execute(delete(replay_queue).where(replay_queue.c.workflow_id == due.workflow_id))
        orphans = children_cancelled + len(settle_family(connection, [due.workflow_id], now))
        finished = {WorkflowStatus.FAILED: 1}
        if orphans:
            finished[WorkflowStatus.CANCELLED] = orphans
        return ReplayBatchOutcome(
            replayed=1,
            taken=1,
            finished=finished,
            replay_delays=[max(0, now - due.enqueued_at) / 1e6],
            steps_cancelled=cancelled,
        )

    @staticmethod
    def _load_undelivered(connection: Connection, workflow_ids: list[str]) -> dict[str, list[JournalEntry]]:
        """The finished steps of these workflows whose outcome is not delivered yet, in journal order."""
        if not workflow_ids:
            return {}
        journals: dict[str, list[JournalEntry]] = {workflow_id: [] for workflow_id in workflow_ids}
        for row in connection.execute(
            select(*_journal_columns)
            .where(
                steps.c.workflow_id.in_(workflow_ids),
                # Spelled as the partial index's predicate, which holds only such steps and running ones.
                steps.c.delivered_in.is_(None),
                steps.c.status != StepStatus.RUNNING,
                steps.c.kind.not_in([kind.value for kind in INSTANT_KINDS]),
            )
            .order_by(steps.c.workflow_id, steps.c.number)
        ):
            journals[row.workflow_id].append(_journal_entry(row))
        return journals

    @staticmethod
    def load_journals(connection: Connection, workflow_ids: list[str]) -> dict[str, list[JournalEntry]]:
        journals: dict[str, list[JournalEntry]] = defaultdict(list)
        if not workflow_ids:
            return journals
        for row in connection.execute(
            select(*_journal_columns)
            .where(steps.c.workflow_id.in_(workflow_ids))
            .order_by(steps.c.workflow_id, steps.c.number)
        ):
            journals[row.workflow_id].append(_journal_entry(row))
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
        for workflow_id, _shard, _fifo_key, step in new_steps:
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
                    # Resolved when taken: nothing to deliver.
                    "delivered_in": SETTLED if complete else None,
                }
            )
            if step.wake_at_us is not None:
                outcome.next_wake_at = min(outcome.next_wake_at or step.wake_at_us, step.wake_at_us)
        compact_step_args(connection, self._dialect, step_rows, [step.encoded for *_, step in new_steps])
        step_ids = (
            connection.execute(insert(steps).returning(steps.c.id, sort_by_parameter_order=True), step_rows)
            .scalars()
            .all()
        )
        task_rows = []
        for step_id, (workflow_id, shard, fifo_key, step) in zip(step_ids, new_steps, strict=True):
            if step.kind not in EXECUTOR_STEP_KINDS:
                continue
            assert step.retry is not None and step.task_kind is not None
            task_rows.append(
                {
                    "id": step_id,
                    "shard": shard,
                    "workflow_created_at": fifo_key,
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
        self._children.start(
            connection,
            [
                ChildStart(workflow_id, step.number, fifo_key, step.child_workflow, step.child_args_json)
                for workflow_id, _shard, fifo_key, step in new_steps
                if step.child_workflow is not None and step.child_args_json is not None
            ],
            now,
        )

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
