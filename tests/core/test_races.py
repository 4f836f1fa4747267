"""A workflow advances on any completion (issue 12, item 3), through a real coordinator and executor,
on both databases: a race advances at its first result and cancels the loser on its executor, and
an asyncio timeout (a durable timer) fires after a coordinator restart mid-race."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.replay import TIMER_STEP_NAME
from conveyor.coordinator.workflow_cache import MODE_VARIABLE, CacheMode
from support import eventually, registry_of
from toolkit import MakeStack, handlers_of, restart_coordinator, step_rows, task_rows, wait_finished

NO_RETRY = RetryPolicy(max_attempts=1, initial_backoff=0.05)


@pytest.fixture(autouse=True, params=[mode.value for mode in CacheMode])
def cache_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with the workflow cache on, off, and evicting at random."""
    monkeypatch.setenv(MODE_VARIABLE, request.param)
    return str(request.param)


@workflow
async def race(ctx: WorkflowContext) -> Any:
    fast = asyncio.ensure_future(ctx.task("fast", "f", name="fast", retry=NO_RETRY))
    slow = asyncio.ensure_future(ctx.task("slow", "s", name="slow", retry=NO_RETRY))
    done, pending = await asyncio.wait([fast, slow], return_when=asyncio.FIRST_COMPLETED)
    for loser in pending:
        loser.cancel()
    winner = next(task for task in (fast, slow) if task in done).result()
    return [winner, await ctx.task("fast", f"after {winner}", name="after", retry=NO_RETRY)]


@workflow
async def bounded(ctx: WorkflowContext, seconds: float) -> Any:
    try:
        return await asyncio.wait_for(ctx.task("unserved", None, name="unserved", retry=NO_RETRY), seconds)
    except TimeoutError:
        await asyncio.sleep(0.2)
        return "timed out"


async def test_a_race_advances_at_its_first_result_and_the_loser_is_cancelled_on_its_executor(
    make_stack: MakeStack,
) -> None:
    slow_started = asyncio.Event()

    @task_handler("fast")
    async def fast(payload: Any) -> Any:
        await slow_started.wait()  # the race is real: both steps run at once
        return f"{payload}!"

    @task_handler("slow")
    async def slow(payload: Any) -> Any:
        slow_started.set()
        await asyncio.Event().wait()  # never finishes on its own
        return payload

    stack = await make_stack(registry_of(race))
    executor = stack.start_executor(handlers=handlers_of(fast, slow), llm=False, concurrency=4)
    started = await stack.client.start_workflow("race")

    finished = await wait_finished(stack.client, started.workflow_id, within=60)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == ["f!", "after f!!"]
    rows = {row.name: row for row in await step_rows(stack.database_url, started.workflow_id)}
    assert rows["slow"].status == "cancelled"
    assert "cancelled by the workflow code" in rows["slow"].error
    assert rows["fast"].delivered_in == 1 and rows["slow"].delivered_in == 0
    assert await task_rows(stack.database_url, started.workflow_id) == []
    await eventually(lambda: executor.tasks_cancelled == 1 and executor.running_tasks == 0)
    assert list((await stack.client.diagnose()).violations) == []


async def test_a_timeout_set_before_a_coordinator_restart_fires_after_it(make_stack: MakeStack) -> None:
    stack = await make_stack(registry_of(bounded))
    started = await stack.client.start_workflow("bounded", {"seconds": 1.5})

    async def timer_set() -> bool:
        names = [row.name for row in await step_rows(stack.database_url, started.workflow_id)]
        return names == [TIMER_STEP_NAME, "unserved"]

    await eventually(timer_set)
    await stack.stop_coordinator()
    timer, _ = await step_rows(stack.database_url, started.workflow_id)
    assert (timer.kind, timer.status, timer.args) == ("sleep", "running", '{"seconds":1.5}')
    await restart_coordinator(stack)

    finished = await wait_finished(stack.client, started.workflow_id, within=60)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == "timed out"
    rows = await step_rows(stack.database_url, started.workflow_id)
    assert [(row.name, row.status) for row in rows] == [
        (TIMER_STEP_NAME, "completed"),
        ("unserved", "cancelled"),
        (TIMER_STEP_NAME, "completed"),  # asyncio.sleep(0.2)
    ]
    assert rows[0].completed_at >= rows[0].wake_at
    assert await task_rows(stack.database_url, started.workflow_id) == []
    assert list((await stack.client.diagnose()).violations) == []


@workflow
async def turns(ctx: WorkflowContext, count: int) -> int:
    total = 0
    for turn in range(count):
        total += await ctx.task("fast", turn, name=f"turn{turn}")
    return total


async def test_a_long_loop_advances_from_the_cache_when_it_is_on(
    make_stack: MakeStack, cache_mode: str
) -> None:
    @task_handler("fast")
    async def fast(payload: Any) -> Any:
        return payload

    stack = await make_stack(registry_of(turns))
    stack.start_executor(handlers=handlers_of(fast), llm=False)
    started = await stack.client.start_workflow("turns", {"count": 30})

    finished = await wait_finished(stack.client, started.workflow_id, within=60)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == sum(range(30))
    cache = stack.coordinator.stats.workflow_cache
    if cache_mode == CacheMode.ON:
        assert (cache.misses, cache.hits) == (1, 30)  # replayed from scratch once, at its start
    elif cache_mode == CacheMode.OFF:
        assert (cache.hits, cache.misses) == (0, 31)
    else:  # a run lost after a partial read is read again in full: one more lookup
        assert cache.hits <= 30 and cache.hits + cache.misses >= 31
    assert cache.entries == 0  # finished: dropped


@workflow
async def resending_loop(ctx: WorkflowContext, count: int) -> int:
    """An agent loop: every step sends the whole history so far, which grows by 8 KB a turn."""
    history: list[str] = []
    for turn in range(count):
        history.append(await ctx.task("echo", {"turn": turn, "history": history}, name="turn"))
    return len(history)


async def test_a_loop_resending_its_growing_history_stays_in_a_small_cache(
    make_stack: MakeStack, cache_mode: str
) -> None:
    """The cache's estimate of a run counts what each step's arguments add, not the whole
    history again: counted whole, 40 turns of 8 KB made the estimate 6.5 MB, and a cache of
    2 MiB dropped the run after 22 turns and replayed every later step from scratch. Counted
    as added (with the argument encoder's memo, about twice the history), it is about 1.3 MB."""

    @task_handler("echo")
    async def echo(payload: Any) -> Any:
        return f"{payload['turn']} " + "x" * 8192

    stack = await make_stack(registry_of(resending_loop), workflow_cache_mib=2)
    stack.start_executor(handlers=handlers_of(echo), llm=False)
    started = await stack.client.start_workflow("resending_loop", {"count": 40})

    finished = await wait_finished(stack.client, started.workflow_id, within=60)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    cache = stack.coordinator.stats.workflow_cache
    if cache_mode == CacheMode.ON:
        assert (cache.misses, cache.hits) == (1, 40)
