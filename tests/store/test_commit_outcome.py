"""A COMMIT of unknown outcome: the connection breaks after the database committed.

The writer must learn that the transaction committed (its commit marker) and hand out the
results it has, rather than run the batch again: the units are not idempotent (an epoch
bump bumps again, a start without a key starts a second workflow, a claim claims again).
The fault is injected at the driver level: the real COMMIT runs, then the driver raises the
error a dropped connection raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from conveyor import WorkflowContext, workflow
from conveyor.coordinator.store.database import Database
from conveyor.coordinator.store.executors import ExecutorRecords
from conveyor.coordinator.store.schema import cluster, workflows
from conveyor.coordinator.store.writer import Writer
from support import ManualExecutor, Stack, eventually, llm_message_json, registry_of


class CommitBreaker:
    """Makes the next ``armed`` COMMITs of ``engine`` succeed and then raise, as a connection
    that drops just after the server committed but before the client heard back."""

    def __init__(self, engine: Engine, *, commit_first: bool = True) -> None:
        self.dialect = engine.dialect
        self.original = self.dialect.do_commit
        self.commit_first = commit_first
        self.armed = 0
        self.broken = 0
        self.dialect.do_commit = self._do_commit  # type: ignore[method-assign]

    def _do_commit(self, dbapi_connection: Any) -> None:
        if self.armed and not self.commit_first:
            self.armed -= 1
            self.broken += 1
            raise self.dialect.loaded_dbapi.OperationalError("server closed the connection (injected)")
        self.original(dbapi_connection)
        if self.armed:
            self.armed -= 1
            self.broken += 1
            raise self.dialect.loaded_dbapi.OperationalError(
                "server closed the connection unexpectedly (injected after the commit succeeded)"
            )

    def restore(self) -> None:
        self.dialect.do_commit = self.original  # type: ignore[method-assign]


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    db.open_cluster(None)
    yield db
    db.dispose()


def epoch(db: Database) -> int:
    with db.reader.connect() as connection:
        return int(connection.execute(sa.select(cluster.c.epoch)).scalar_one())


@pytest.mark.parametrize("commit_first", [True, False], ids=["committed", "not-committed"])
async def test_a_batch_whose_commit_broke_is_applied_exactly_once(
    database: Database, commit_first: bool
) -> None:
    breaker = CommitBreaker(database.writer, commit_first=commit_first)
    writer = Writer(database.writer, retry_deadline=30.0, group_commit_window=0.05)
    writer.start()
    try:
        before = epoch(database)
        breaker.armed = 1
        results = await asyncio.gather(
            *(writer.run(ExecutorRecords.bump_epoch, "bump epoch") for _ in range(3))
        )
        assert breaker.broken == 1
        # Three bumps, each applied once, whether the broken commit had committed or not.
        assert epoch(database) == before + 3
        assert sorted(results) == [before + 1, before + 2, before + 3]
        # The writer still works afterwards, and the marker table stays tiny.
        assert await writer.run(ExecutorRecords.bump_epoch, "bump epoch") == before + 4
        with database.reader.connect() as connection:
            assert (
                connection.execute(sa.text("SELECT count(*) FROM conveyor_write_commits")).scalar_one() == 1
            )
    finally:
        breaker.restore()
        await writer.stop()


@workflow
async def hello(ctx: WorkflowContext, n: int) -> int:
    return n


def break_commit_after(breaker: CommitBreaker, owner: Any, method: str) -> None:
    """Arm ``breaker`` from inside the first call of ``owner.method`` that returns something:
    the commit of exactly that unit's transaction breaks (after committing)."""
    original = getattr(owner, method)

    def arming(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if result and not breaker.broken and not breaker.armed:
            breaker.armed = 1
        return result

    setattr(owner, method, arming)


async def test_a_start_without_a_key_whose_commit_broke_starts_one_workflow(database_url: str) -> None:
    stack = Stack(database_url, registry_of(hello))
    try:
        await stack.start_coordinator()
        assert stack.client is not None
        breaker = CommitBreaker(stack.coordinator.database.writer)
        break_commit_after(breaker, stack.coordinator.workflows, "start")
        try:
            started = await stack.client.start_workflows([("hello", {"n": 1})])
        finally:
            breaker.restore()
        assert breaker.broken == 1
        with stack.coordinator.database.reader.connect() as connection:
            ids = (
                connection.execute(sa.select(workflows.c.id).where(workflows.c.name == "hello"))
                .scalars()
                .all()
            )
        assert ids == [started[0].workflow_id]
    finally:
        await stack.close()


@workflow
async def ask(ctx: WorkflowContext) -> str:
    return (await ctx.llm(model="sim", max_tokens=5, messages=[{"role": "user", "content": "q"}])).text


async def test_a_claim_whose_commit_broke_still_reaches_the_executor(database_url: str) -> None:
    """Run again, the claim would find the task already claimed (by the first, committed
    run) and claim nothing: the executor would never get it, and it would stay claimed by a
    live executor for good."""
    stack = Stack(database_url, registry_of(ask))
    try:
        await stack.start_coordinator()
        assert stack.client is not None and stack.server is not None
        breaker = CommitBreaker(stack.coordinator.database.writer)
        break_commit_after(breaker, stack.coordinator.queue, "claim")
        try:
            async with ManualExecutor(stack.server.address, "claimer") as executor:
                await executor.connect(free_slots=1)
                [started] = await stack.client.start_workflows([("ask", {})])
                [task] = await executor.take(1, within=30)
                assert task.workflow_id == started.workflow_id
                assert breaker.broken == 1
                await executor.report(executor.success(task, llm_message_json("a")))
                await eventually(lambda: _status(stack, started.workflow_id, "completed"), timeout=30)
        finally:
            breaker.restore()
    finally:
        await stack.close()


async def _status(stack: Stack, workflow_id: str, status: str) -> bool:
    assert stack.client is not None
    return str((await stack.client.get_workflow(workflow_id)).status.value) == status
