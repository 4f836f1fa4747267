"""The workflow cache (issue 12, item 1): runs kept between activations, valid only in step with the
store, bounded by count and by memory, and the same decision as a replay from scratch."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from journal_model import STARTED_AT_US, JournalModel, definition_of

from conveyor.coordinator.model import WorkflowStatus
from conveyor.coordinator.replay import WorkflowRun
from conveyor.coordinator.workflow_cache import RUN_OVERHEAD_BYTES, CacheMode, WorkflowCache
from conveyor.workflow import WorkflowContext


async def loop_of_turns(ctx: WorkflowContext, turns: int) -> list[Any]:
    history: list[Any] = []
    for turn in range(turns):
        history.append(await ctx.task("work", {"turn": turn, "history": history}, name=f"turn{turn}"))
    return history


def started_run(workflow_id: str) -> WorkflowRun:
    run = WorkflowRun(definition_of(loop_of_turns), workflow_id, {"turns": 3}, started_at_us=STARTED_AT_US)
    outcome = run.resume((), 0, STARTED_AT_US)
    assert outcome.status is WorkflowStatus.RUNNING
    return run


def test_a_run_is_found_only_at_the_counts_it_left_the_workflow_at() -> None:
    cache = WorkflowCache(10, 1 << 30, CacheMode.ON)
    run = started_run("wf-1")
    cache.put(run, 0)
    assert cache.expected("wf-1") == (1, 1)

    assert cache.take("wf-1", 1, 2) is None  # the store moved on without it: dropped
    assert run.closed
    assert cache.expected("wf-1") is None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (0, 1, 1)

    again = started_run("wf-1")
    cache.put(again, 0)
    assert cache.take("wf-1", 1, 1) is again
    assert (cache.stats.hits, cache.stats.entries) == (1, 0)
    again.close()


def test_least_recently_used_runs_are_evicted_beyond_the_count_and_the_memory_bound() -> None:
    cache = WorkflowCache(2, 1 << 30, CacheMode.ON)
    runs = [started_run(f"wf-{i}") for i in range(3)]
    for run in runs:
        cache.put(run, 0)
    assert [cache.expected(f"wf-{i}") is not None for i in range(3)] == [False, True, True]
    assert runs[0].closed and cache.stats.evictions == 1

    small = WorkflowCache(100, 3 * RUN_OVERHEAD_BYTES, CacheMode.ON)
    for run in runs[1:]:
        small.put(run, RUN_OVERHEAD_BYTES)  # about 2x the overhead each: only one fits
    assert [small.expected(f"wf-{i}") is not None for i in (1, 2)] == [False, True]
    assert small.stats.bytes <= 3 * RUN_OVERHEAD_BYTES
    runs[2].close()


def test_off_keeps_nothing_and_forget_drops_at_the_next_lookup() -> None:
    off = WorkflowCache(10, 1 << 30, CacheMode.OFF)
    run = started_run("wf-1")
    off.put(run, 0)
    assert run.closed and off.expected("wf-1") is None

    cache = WorkflowCache(10, 1 << 30, CacheMode.ON)
    kept = started_run("wf-2")
    cache.put(kept, 0)
    cache.forget(["wf-2"])
    assert not kept.closed  # closing runs workflow code: only on the runner's thread
    assert cache.take("wf-3", 0, 0) is None
    assert kept.closed and cache.expected("wf-2") is None


def test_random_evict_misses_about_half_the_time() -> None:
    cache = WorkflowCache(10, 1 << 30, CacheMode.RANDOM_EVICT, rng=random.Random(3))
    hits = 0
    for _ in range(40):
        run = started_run("wf-1")
        cache.put(run, 0)
        taken = cache.take("wf-1", 1, 1)
        if taken is not None:
            hits += 1
            taken.close()
    assert 5 < hits < 35


@pytest.mark.parametrize("turns", [1, 5, 40])
def test_a_cached_run_and_a_replay_from_scratch_decide_the_same_at_every_turn(turns: int) -> None:
    model = JournalModel(loop_of_turns, {"turns": turns})  # checks both at every activation
    for turn in range(turns):
        model.replay()
        model.complete(f"turn{turn}", f"reply {turn}")
    assert model.replay().status is WorkflowStatus.COMPLETED


async def keeps_state(ctx: WorkflowContext) -> Any:
    loop = asyncio.get_running_loop()
    seen = []
    for turn in range(3):
        seen.append([await ctx.task("work", turn, name=f"t{turn}"), loop.time()])
    return seen


def test_the_virtual_clock_of_a_cached_run_matches_a_replay() -> None:
    model = JournalModel(keeps_state)
    for turn in range(3):
        model.replay()
        model.complete(f"t{turn}", turn)
    final = model.replay()
    assert final.result_json == "[[0,1.0],[1,2.0],[2,3.0]]"
    model.close()
