"""The task queue's claims, leases and fencing against a model small enough to be obviously right.

Hypothesis drives the real :class:`conveyor.coordinator.store.queue.TaskQueue` on a real
database (SQLite file and PostgreSQL schema) through random sequences of what
executors and the coordinator do to tasks: claim, report with the current token,
an old token or as the wrong executor, report again, fail, get rate limited, lose
the lease, give back undelivered tasks, and operators force-failing queued tasks.
After every step the database must agree with the model on every task: queued or
claimed (by whom, with which token, at which attempt) or finished (how, and with
the token of the one result applied), and each report must get the disposition the
model predicts. Claims must come oldest workflow first.

Backoffs are zero, so a retried task is claimable at once and the model needs no clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from conveyor.coordinator.model import ErrorClass, StepStatus
from conveyor.coordinator.store import Database, Disposition, ReportedResult, TaskQueue
from conveyor.coordinator.store.schema import ALL_TABLES, replay_queue, steps, tasks, workflows

EXECUTORS = ("executor-a", "executor-b")
WORKFLOWS = 3
STEPS_PER_WORKFLOW = 2
MAX_ATTEMPTS = 2
MAX_RATE_LIMIT_WAITS = 2
SHARDS = (0, 1)


class State(Enum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass
class ModelTask:
    id: int
    workflow_created_at: int
    shard: int
    state: State = State.QUEUED
    holder: str | None = None
    token: int = 0
    attempt: int = 1
    rate_limit_waits: int = 0
    #: (token, executor) of the result that finished it, if a result did.
    applied: tuple[int, str] | None = None

    @property
    def done(self) -> bool:
        return self.state in (State.COMPLETED, State.FAILED)


@dataclass
class Model:
    tasks: dict[int, ModelTask] = field(default_factory=dict)

    def claimable(self) -> list[ModelTask]:
        queued = [task for task in self.tasks.values() if task.state is State.QUEUED]
        return sorted(queued, key=lambda task: (task.workflow_created_at, task.id))

    def retry_or_fail(self, task: ModelTask) -> None:
        """A spent attempt: retried at once while attempts remain."""
        task.holder = None
        if task.attempt >= MAX_ATTEMPTS:
            task.state = State.FAILED
        else:
            task.state = State.QUEUED
            task.attempt += 1


OUTCOMES = {
    "success": None,
    "retryable": ErrorClass.RETRYABLE,
    "permanent": ErrorClass.NON_RETRYABLE,
    "rate limited": ErrorClass.RATE_LIMITED,
}


class TaskQueueMachine(RuleBasedStateMachine):
    database: Database  # set by the test, once per database

    def __init__(self) -> None:
        super().__init__()
        self.queue = TaskQueue(self.database.dialect, rng=random.Random(0))
        self.model = Model()
        self.now = 1_000_000

    def _tick(self) -> int:
        self.now += 1
        return self.now

    @initialize(shard_by_shard=st.booleans())
    def fresh_tasks(self, shard_by_shard: bool) -> None:
        """Empty tables, then WORKFLOWS running workflows with STEPS_PER_WORKFLOW queued LLM tasks each.

        Claims over SHARDS are planned either shard by shard (as for a few of many shards)
        or as one walk of the cross-shard order (as for most of them); both must behave alike.
        """
        shard_count = 100 if shard_by_shard else len(SHARDS)
        self.queue = TaskQueue(self.database.dialect, rng=random.Random(0), shard_count=shard_count)
        with self.database.writer.begin() as connection:
            for table in reversed(ALL_TABLES):
                connection.execute(sa.delete(table))
            for number in range(WORKFLOWS):
                workflow_id, created_at, shard = f"wf-{number}", 100 + number, SHARDS[number % len(SHARDS)]
                connection.execute(
                    sa.insert(workflows).values(
                        id=workflow_id,
                        name="model",
                        status="running",
                        shard=shard,
                        args="{}",
                        created_at=created_at,
                        step_count=STEPS_PER_WORKFLOW,
                    )
                )
                for position in range(STEPS_PER_WORKFLOW):
                    step_id = connection.execute(
                        sa.insert(steps)
                        .values(
                            workflow_id=workflow_id,
                            number=position,
                            kind="llm",
                            name=f"s{position}",
                            args="{}",
                            status=StepStatus.RUNNING,
                            attempt=0,
                            created_at=created_at,
                        )
                        .returning(steps.c.id)
                    ).scalar_one()
                    connection.execute(
                        sa.insert(tasks).values(
                            id=step_id,
                            shard=shard,
                            workflow_created_at=created_at,
                            workflow_id=workflow_id,
                            kind="llm",
                            attempt=1,
                            max_attempts=MAX_ATTEMPTS,
                            initial_backoff=0.0,
                            backoff_multiplier=2.0,
                            max_backoff=0.0,
                            rate_limit_waits=0,
                            max_rate_limit_waits=MAX_RATE_LIMIT_WAITS,
                            available_at=0,
                            fencing_token=0,
                        )
                    )
                    self.model.tasks[step_id] = ModelTask(step_id, created_at, shard)

    # --------------------------------------------------------------------- rules

    @rule(executor=st.sampled_from(EXECUTORS), limit=st.integers(1, 4))
    def claim(self, executor: str, limit: int) -> None:
        with self.database.writer.begin() as connection:
            claimed = self.queue.claim(connection, executor, SHARDS, ["llm"], limit, self._tick())
        expected = self.model.claimable()[:limit]
        assert [task.task_id for task in claimed] == [task.id for task in expected], "oldest workflow first"
        for task, model in zip(claimed, expected, strict=True):
            # Tokens are random (unguessable), so the model learns each new one; it must be fresh.
            assert task.fencing_token not in (0, model.token) and task.attempt == model.attempt
            model.state, model.holder, model.token = State.CLAIMED, executor, task.fencing_token

    @rule(
        data=st.data(),
        outcome=st.sampled_from(list(OUTCOMES)),
        token_shift=st.sampled_from([0, 0, 0, -1, 1]),
        as_other_executor=st.booleans(),
    )
    def report(self, data: st.DataObject, outcome: str, token_shift: int, as_other_executor: bool) -> None:
        """A result for any task: usually the right one, sometimes stale, foreign or repeated."""
        task = data.draw(st.sampled_from(sorted(self.model.tasks.values(), key=lambda t: t.id)))
        if task.applied is not None and not as_other_executor and token_shift == 0:
            executor, token = task.applied[1], task.applied[0]  # the very result applied before
        else:
            holder = task.holder or EXECUTORS[0]
            executor = next(e for e in EXECUTORS if e != holder) if as_other_executor else holder
            token = task.token + token_shift
        disposition = self._record(task, executor, token, outcome)
        assert disposition is self._apply(task, executor, token, outcome), (task, executor, token, outcome)

    @rule(executor=st.sampled_from(EXECUTORS))
    def lease_expires(self, executor: str) -> None:
        with self.database.writer.begin() as connection:
            self.queue.requeue_lost(connection, executor, self._tick())
        for task in self.model.tasks.values():
            if task.state is State.CLAIMED and task.holder == executor:
                self.model.retry_or_fail(task)

    @rule(executor=st.sampled_from(EXECUTORS), data=st.data())
    def reconnects_holding_some(self, executor: str, data: st.DataObject) -> None:
        """A reconnecting executor lists what it holds; the rest never arrived and goes back unspent."""
        holding = sorted(t.id for t in self.model.tasks.values() if t.holder == executor)
        held = data.draw(st.lists(st.sampled_from(holding), unique=True) if holding else st.just([]))
        with self.database.writer.begin() as connection:
            self.queue.release_unheld(connection, executor, held)
        for task in self.model.tasks.values():
            if task.holder == executor and task.id not in held:
                task.state, task.holder = State.QUEUED, None

    @rule(limit=st.integers(0, 3))
    def operator_fails_pending(self, limit: int) -> None:
        with self.database.writer.begin() as connection:
            failed, _replays = self.queue.fail_pending(connection, None, limit, "operator", self._tick())
        queued = self.model.claimable()
        chosen = queued if limit == 0 else queued[:limit]
        assert failed == len(chosen)
        for task in chosen:
            task.state = State.FAILED

    # ---------------------------------------------------------------- the check

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        with self.database.reader.connect() as connection:
            rows = {row.id: row for row in connection.execute(sa.select(tasks))}
            journal = {row.id: row for row in connection.execute(sa.select(steps))}
            idle = set(connection.execute(sa.select(replay_queue.c.workflow_id)).scalars())
        for task in self.model.tasks.values():
            step = journal[task.id]
            if task.done:
                assert task.id not in rows, f"task {task.id} is finished but still queued"
                assert step.status == task.state.value
                applied = None if step.result_token is None else (step.result_token, step.executor_id)
                assert applied == task.applied, f"step {task.id} was finished by another result"
                continue
            row = rows[task.id]
            assert step.status == StepStatus.RUNNING
            assert (row.claimed_by, row.fencing_token, row.attempt, row.rate_limit_waits) == (
                task.holder,
                task.token,
                task.attempt,
                task.rate_limit_waits,
            )
        # The replay-queue invariant: a workflow with nothing in progress is due for a replay.
        for number in range(WORKFLOWS):
            workflow_id = f"wf-{number}"
            if all(t.done for t in self.model.tasks.values() if journal[t.id].workflow_id == workflow_id):
                assert workflow_id in idle

    # ------------------------------------------------------------------ helpers

    def _record(self, task: ModelTask, executor: str, token: int, outcome: str) -> Disposition:
        error_class = OUTCOMES[outcome]
        result = ReportedResult(
            task.id,
            token,
            result_json='"ok"' if error_class is None else None,
            error_class=error_class,
            error="" if error_class is None else f"{outcome} failure",
            retry_after=0.0 if error_class is ErrorClass.RATE_LIMITED else None,
        )
        with self.database.writer.begin() as connection:
            [disposition] = self.queue.record(connection, executor, [result], self._tick()).dispositions
        return disposition

    def _apply(self, task: ModelTask, executor: str, token: int, outcome: str) -> Disposition:
        """What the model says becomes of the report, applying it."""
        if task.state is not State.CLAIMED or task.holder != executor or task.token != token:
            return Disposition.DUPLICATE if task.applied == (token, executor) else Disposition.STALE
        error_class = OUTCOMES[outcome]
        if error_class is None:
            task.state, task.holder, task.applied = State.COMPLETED, None, (token, executor)
        elif error_class is ErrorClass.NON_RETRYABLE:
            task.state, task.holder, task.applied = State.FAILED, None, (token, executor)
        elif error_class is ErrorClass.RATE_LIMITED:
            if task.rate_limit_waits >= MAX_RATE_LIMIT_WAITS:
                task.state, task.holder, task.applied = State.FAILED, None, (token, executor)
            else:
                task.state, task.holder = State.QUEUED, None
                task.rate_limit_waits += 1
        else:
            self.model.retry_or_fail(task)
            if task.state is State.FAILED:
                task.applied = (token, executor)
        return Disposition.ACCEPTED


@pytest.fixture
def migrated(database_url: str) -> Database:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


def test_the_task_queue_behaves_like_its_model(migrated: Database) -> None:
    TaskQueueMachine.database = migrated
    run_state_machine_as_test(
        TaskQueueMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
