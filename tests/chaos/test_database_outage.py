"""A database outage longer than ``database_retry_deadline`` in the middle of a run.

The writer gives up on a transaction after the retry deadline and its units fail with
Unavailable; the background loops that submitted them (replay, timers, lease expiry)
fail and are restarted. Nothing may be forgotten on the way: after the outage every
workflow finishes, those sleeping through it and those whose executor died during it.

The fault is real and confined to this test's coordinator: PostgreSQL is reached through
a TCP proxy that is cut (connections reset, new ones refused); SQLite's write lock is
held by another connection. The retry deadline is shortened to 1 s so an outage of a few
seconds outlasts it, as a 90 s outage outlasts the default 60 s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from bench.chaos.tcp_proxy import TcpProxy
from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from db_faults import SqliteLock
from support import ManualExecutor, Stack, eventually, registry_of

pytestmark = pytest.mark.slow

NAP_SECONDS = 3.0


@workflow
async def nap(ctx: WorkflowContext, n: int) -> str:
    await ctx.sleep(NAP_SECONDS, name="nap")
    return f"rested {n}"


@workflow
async def ask(ctx: WorkflowContext, n: int) -> str:
    reply = await ctx.llm(
        model="sim", max_tokens=50, name="ask", messages=[{"role": "user", "content": f"q{n}"}]
    )
    return reply.text


class LoopFailures(logging.Handler):
    """Records which supervised loops failed (the supervisor's warning names the loop)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.loops: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if record.args and isinstance(record.args, tuple) and str(record.args[0]).startswith("_"):
            self.loops.add(str(record.args[0]))


@pytest.fixture
def loop_failures() -> Iterator[LoopFailures]:
    handler = LoopFailures()
    logger = logging.getLogger("conveyor.coordinator.engine")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


class Outage:
    """Cuts the test coordinator off its database, whichever kind it is."""

    def __init__(self, database_url: str) -> None:
        self.proxy: TcpProxy | None = None
        self.sqlite: SqliteLock | None = None
        if database_url.startswith("postgresql"):
            self.proxy, self.url = TcpProxy.for_url(database_url)
        else:
            self.sqlite, self.url = SqliteLock(database_url), database_url

    def begin(self) -> None:
        if self.proxy is not None:
            self.proxy.break_()
        else:
            assert self.sqlite is not None
            self.sqlite.take()

    def end(self) -> None:
        if self.proxy is not None:
            self.proxy.heal()
        elif self.sqlite is not None:
            self.sqlite.release()

    def close(self) -> None:
        self.end()
        if self.proxy is not None:
            self.proxy.close()


async def test_an_outage_past_the_retry_deadline_strands_nothing(
    database_url: str, loop_failures: LoopFailures
) -> None:
    outage = Outage(database_url)
    stack = Stack(outage.url, registry_of(nap, ask), database_retry_deadline=1.0, lease_ttl=2.0)
    try:
        await stack.start_coordinator()
        await stack.start_simulator()
        assert stack.client is not None and stack.server is not None
        asks = [
            s.workflow_id for s in await stack.client.start_workflows([("ask", {"n": n}) for n in range(2)])
        ]
        naps = [
            s.workflow_id for s in await stack.client.start_workflows([("nap", {"n": n}) for n in range(3)])
        ]

        async with ManualExecutor(stack.server.address, "doomed", capacity=2) as doomed:
            await doomed.connect(free_slots=2)
            assert {task.workflow_id for task in await doomed.take(2)} == set(asks)
            # Every nap is asleep (its replay done, its timer pending) before the outage.
            await eventually(lambda: _replay_queue_empty(stack))

            outage.begin()
            await doomed.go_silent()  # the executor dies during the outage
            # The outage lasts until the timer loop (naps come due) and the lease loop
            # (the doomed executor's lease ends) have each had a write fail for good.
            await eventually(lambda: {"_timer_loop", "_lease_loop"} <= loop_failures.loops, timeout=120)
            outage.end()

            stack.start_executor(concurrency=2)
            await eventually(lambda: _all_finished(stack, asks + naps), timeout=120)

        for workflow_id in asks + naps:
            record = await stack.client.get_workflow(workflow_id)
            assert record.status is WorkflowStatus.COMPLETED, (workflow_id, record.status, record.error)
        report = await stack.client.diagnose()
        assert list(report.violations) == []
    finally:
        outage.close()
        await stack.close()


async def _replay_queue_empty(stack: Stack) -> bool:
    assert stack.client is not None
    return (await stack.client.diagnose()).replay_queue_depth == 0


async def _all_finished(stack: Stack, ids: list[str]) -> bool:
    assert stack.client is not None
    for workflow_id in ids:
        if (await stack.client.get_workflow(workflow_id)).status is not WorkflowStatus.COMPLETED:
            return False
    return True
