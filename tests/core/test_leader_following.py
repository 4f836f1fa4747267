"""Executors and clients given several coordinator addresses find the leader and follow it
through a failover, carrying held tasks and unreported results without running anything twice.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import CoordinatorServer
from conveyor.endpoints import parse_addresses
from conveyor.errors import ConfigurationError
from conveyor.executor.worker import Executor, ExecutorConfig
from support import eventually, registry_of
from toolkit import handlers_of

#: Every call of the handler, by its argument: nothing may run twice.
CALLS: Counter[int] = Counter()
RELEASE = asyncio.Event()


@task_handler("hold")
async def hold(n: int) -> int:
    CALLS[n] += 1
    await RELEASE.wait()
    return n * 10


@workflow
async def held(ctx: WorkflowContext, n: int) -> int:
    return await ctx.task("hold", n, retry=RetryPolicy(max_attempts=1))


@workflow
async def hello(ctx: WorkflowContext, n: int) -> int:
    return n


def server(database_url: str, *, standby: bool = False) -> CoordinatorServer:
    config = CoordinatorConfig(
        database_url=database_url, listen="127.0.0.1:0", standby=standby, leader_lease=4.0
    )
    return CoordinatorServer(config, registry_of(held, hello))


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("standby coordinators need PostgreSQL")
    return database_url


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[tuple[CoordinatorServer, CoordinatorServer]]:
    leader, standby = server(postgres_url), server(postgres_url, standby=True)
    await leader.start()
    await standby.start()
    yield leader, standby
    for each in (standby, leader):
        await each.stop(grace=0.2)


def dead_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_addresses_are_comma_separated() -> None:
    assert parse_addresses(" a:1, b:2 ,a:1") == ["a:1", "b:2"]
    with pytest.raises(ConfigurationError, match="no coordinator address"):
        parse_addresses(" , ")


async def test_a_client_finds_the_leader_behind_a_standby_or_a_dead_address(
    pair: tuple[CoordinatorServer, CoordinatorServer],
) -> None:
    leader, standby = pair
    async with AsyncClient(f"{standby.address},{leader.address}") as client:
        started = await client.start_workflows([("hello", {"n": 1})])
        assert (await client.wait(started[0].workflow_id, timeout=20)).status == WorkflowStatus.COMPLETED
    async with AsyncClient(f"{dead_address()},{leader.address}") as client:
        assert (await client.get_workflow(started[0].workflow_id)).status == WorkflowStatus.COMPLETED


async def test_an_executor_carries_its_tasks_and_results_to_the_new_leader(
    pair: tuple[CoordinatorServer, CoordinatorServer],
) -> None:
    leader, standby = pair
    CALLS.clear()
    RELEASE.clear()
    executor = Executor(
        # The standby first: the executor must follow its hint to the leader.
        ExecutorConfig(coordinator=f"{standby.address},{leader.address}", serve_llm=False, concurrency=5),
        handlers_of(hold),
        None,
    )
    running = asyncio.create_task(executor.run())
    try:
        async with AsyncClient(leader.address) as client:
            ids = [
                s.workflow_id for s in await client.start_workflows([("held", {"n": n}) for n in range(3)])
            ]
        await eventually(lambda: sum(CALLS.values()) == 3, timeout=20)

        # The leader goes away while the executor holds every task; the standby takes over.
        await leader.stop(grace=0.2)
        RELEASE.set()  # the results are ready while no coordinator leads
        async with AsyncClient(f"{leader.address},{standby.address}") as client:
            for workflow_id in ids:
                done = await client.wait(workflow_id, timeout=30)
                assert done.status == WorkflowStatus.COMPLETED, done
                assert done.result == 10 * int(done.args["n"])
        assert standby.leadership is not None and standby.leadership.term == 2
        assert Counter({0: 1, 1: 1, 2: 1}) == CALLS  # nothing ran twice
    finally:
        RELEASE.set()
        executor.drain("test over")
        async with asyncio.timeout(20):
            await running
