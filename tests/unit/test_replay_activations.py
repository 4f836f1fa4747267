"""A workflow advances on any completion (issue 12, item 3): races, timeouts and asyncio timers.

Each test drives a workflow through :class:`JournalModel`, which applies every outcome as the
store does and, at every activation, checks that a replay from scratch and a run kept between
activations (the workflow cache) decide the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from journal_model import STARTED_AT_US, JournalModel, SameDraw, definition_of, timers

from conveyor.coordinator.model import StepKind, StepStatus, WorkflowStatus, canonical_json
from conveyor.coordinator.replay import TIMER_STEP_NAME, JournalEntry, replay
from conveyor.errors import StepFailed
from conveyor.workflow import WorkflowContext


def work(ctx: WorkflowContext, label: str, payload: Any = None) -> Any:
    return ctx.task("work", payload if payload is not None else label, name=label)


# --- asyncio.wait(FIRST_COMPLETED) ----------------------------------------------------------------


async def first_of_two(ctx: WorkflowContext, cancel_loser: bool) -> Any:
    a = asyncio.ensure_future(work(ctx, "a"))
    b = asyncio.ensure_future(work(ctx, "b"))
    done, pending = await asyncio.wait([a, b], return_when=asyncio.FIRST_COMPLETED)
    winner = next(task for task in (a, b) if task in done).result()
    if cancel_loser:
        for task in pending:
            task.cancel()
    after = await work(ctx, "after", f"after {winner}")
    return [winner, after]


@pytest.mark.parametrize("cancel_loser", [True, False], ids=["loser cancelled", "loser ignored"])
def test_first_completed_advances_at_the_first_result_while_the_other_step_runs(cancel_loser: bool) -> None:
    model = JournalModel(first_of_two, {"cancel_loser": cancel_loser})
    start = model.replay()
    assert [s.name for s in start.new_steps] == ["a", "b"]

    model.complete("b", "B")
    advanced = model.replay()

    assert advanced.status is WorkflowStatus.RUNNING
    assert advanced.delivered == ((1, 1),)
    assert [(s.name, s.args_json) for s in advanced.new_steps] == [
        ("after", canonical_json({"kind": "work", "payload": "after B"}))
    ]
    if cancel_loser:
        assert advanced.withdrawn == (0,)
        assert model.entries[0].status is StepStatus.CANCELLED
    else:
        assert advanced.withdrawn == ()
        assert model.entries[0].status is StepStatus.RUNNING
        model.complete("a", "A")  # the ignored loser's result: delivered to nobody
        assert model.replay().new_steps == ()
    model.complete("after", "done")
    assert model.replay().result_json == canonical_json(["B", "done"])
    model.close()


def test_outcomes_finished_together_are_delivered_in_journal_order_in_one_activation() -> None:
    model = JournalModel(first_of_two, {"cancel_loser": True})
    model.replay()
    model.complete("b", "B")
    model.complete("a", "A")  # both before the replay: one activation delivers both, a first

    advanced = model.replay()

    assert advanced.delivered == ((0, 1), (1, 1))
    assert advanced.withdrawn == ()
    assert "after A" in advanced.new_steps[0].args_json
    model.close()


# --- asyncio.as_completed ------------------------------------------------------------------------


async def first_two_of_three(ctx: WorkflowContext) -> list[Any]:
    # Tasks made in a fixed order: as_completed takes a set, whose order is not.
    started = [asyncio.ensure_future(work(ctx, f"s{i}")) for i in range(3)]
    results = []
    for next_done in asyncio.as_completed(started):
        results.append(await next_done)
        if len(results) == 2:
            break
    for task in started:
        task.cancel()
    return results


def test_as_completed_hands_results_over_in_completion_order() -> None:
    model = JournalModel(first_two_of_three)
    model.replay()
    model.complete("s2", "two")
    assert model.replay().status is WorkflowStatus.RUNNING
    model.complete("s0", "zero")

    finished = model.replay()

    assert (finished.status, finished.result_json) == (
        WorkflowStatus.COMPLETED,
        canonical_json(["two", "zero"]),
    )
    assert model.names(StepStatus.CANCELLED) == ["s1"]  # the finished workflow left it running
    model.close()


# --- asyncio.wait_for ------------------------------------------------------------------------------


async def bounded(ctx: WorkflowContext) -> Any:
    try:
        return await asyncio.wait_for(work(ctx, "slow"), timeout=30)
    except TimeoutError:
        return await work(ctx, "fallback")


def test_wait_for_takes_a_durable_timer_step() -> None:
    model = JournalModel(bounded)

    start = model.replay()

    assert timers(start) == [30]
    timer = next(s for s in start.new_steps if s.name == TIMER_STEP_NAME)
    assert (timer.kind, timer.wake_at_us) == (StepKind.SLEEP, STARTED_AT_US + 30_000_000)
    assert [s.name for s in start.new_steps if s.kind is StepKind.TASK] == ["slow"]
    model.close()


def test_wait_for_timing_out_withdraws_the_step_and_the_code_carries_on() -> None:
    model = JournalModel(bounded)
    model.replay()
    slow = model.number("slow")

    model.fire(30)
    timed_out = model.replay()

    assert timed_out.withdrawn == (slow,)
    assert [s.name for s in timed_out.new_steps] == ["fallback"]
    assert model.entries[slow].status is StepStatus.CANCELLED
    model.complete("fallback", "plan b")
    assert model.replay().result_json == '"plan b"'
    model.close()


def test_wait_for_step_winning_cancels_the_timer() -> None:
    model = JournalModel(bounded)
    model.replay()

    model.complete("slow", "in time")
    finished = model.replay()

    assert finished.result_json == '"in time"'
    assert model.names(StepStatus.CANCELLED) == [TIMER_STEP_NAME]  # never fires
    model.close()


def test_a_timer_that_fired_after_the_code_cancelled_it_is_delivered_to_nobody() -> None:
    model = JournalModel(bounded)
    model.replay()
    model.complete("slow", "in time")
    model.fire(30)  # both before the replay: the step comes first in journal order

    finished = model.replay()

    assert finished.result_json == '"in time"'
    model.close()


# --- asyncio.timeout -----------------------------------------------------------------------------


async def deadline_over_two_steps(ctx: WorkflowContext) -> Any:
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        async with asyncio.timeout(10):
            first = await work(ctx, "first")
            second = await work(ctx, "second", f"{first} at {loop.time() - began}")
            return [first, second]
    except TimeoutError:
        return await work(ctx, "late", f"timed out at {loop.time() - began}")


def test_asyncio_timeout_expiring_cancels_the_step_in_progress() -> None:
    model = JournalModel(deadline_over_two_steps)
    assert timers(model.replay()) == [10]
    model.complete("first", "one")  # one second after the start (the model's clock)
    advanced = model.replay()
    assert canonical_json({"kind": "work", "payload": "one at 1.0"}) == advanced.new_steps[0].args_json
    second = model.number("second")

    model.fire(10)
    expired = model.replay()

    assert expired.withdrawn == (second,)
    assert [(s.name, s.args_json) for s in expired.new_steps] == [
        ("late", canonical_json({"kind": "work", "payload": "timed out at 2.0"}))
    ]
    model.complete("late", "sorry")
    assert model.replay().result_json == '"sorry"'
    model.close()


def test_asyncio_timeout_not_reached_cancels_its_timer() -> None:
    model = JournalModel(deadline_over_two_steps)
    model.replay()
    model.complete("first", "one")
    model.replay()
    model.complete("second", "two")

    assert model.replay().result_json == canonical_json(["one", "two"])
    assert model.names(StepStatus.CANCELLED) == [TIMER_STEP_NAME]
    model.close()


# --- asyncio.sleep -------------------------------------------------------------------------------


async def naps(ctx: WorkflowContext) -> Any:
    await asyncio.sleep(0)  # a plain yield: no step
    await asyncio.sleep(2.5)
    return await work(ctx, "after nap")


def test_asyncio_sleep_is_a_durable_timer_and_sleep_zero_a_plain_yield() -> None:
    model = JournalModel(naps)
    start = model.replay()
    assert [(s.kind, s.name, s.args_json) for s in start.new_steps] == [
        (StepKind.SLEEP, TIMER_STEP_NAME, canonical_json({"seconds": 2.5}))
    ]

    model.fire(2.5)

    assert [s.name for s in model.replay().new_steps] == ["after nap"]
    model.close()


# --- shield --------------------------------------------------------------------------------------


async def shielded(ctx: WorkflowContext) -> Any:
    slow = asyncio.ensure_future(work(ctx, "slow"))
    try:
        return await asyncio.wait_for(asyncio.shield(slow), timeout=5)
    except TimeoutError:
        quick = await work(ctx, "quick")
        return [quick, await slow]


def test_a_shielded_step_keeps_running_after_a_timeout_and_is_awaited_later() -> None:
    model = JournalModel(shielded)
    model.replay()
    model.fire(5)

    timed_out = model.replay()

    assert timed_out.withdrawn == ()
    assert [s.name for s in timed_out.new_steps] == ["quick"]
    model.complete("slow", "finally")  # before quick: the code is not waiting for it yet
    assert model.replay().new_steps == ()
    model.complete("quick", "fast")
    assert model.replay().result_json == canonical_json(["fast", "finally"])
    model.close()


# --- failures, cancels and gather -----------------------------------------------------------------


async def race_with_failure(ctx: WorkflowContext) -> Any:
    a = asyncio.ensure_future(work(ctx, "a"))
    b = asyncio.ensure_future(work(ctx, "b"))
    done, _ = await asyncio.wait([a, b], return_when=asyncio.FIRST_COMPLETED)
    first = next(task for task in (a, b) if task in done)
    try:
        return first.result()
    except StepFailed as failure:
        return f"{failure.step_name} failed, then {await (b if first is a else a)}"


def test_a_failed_step_is_delivered_as_step_failed_at_once() -> None:
    model = JournalModel(race_with_failure)
    model.replay()
    model.fail("a")
    assert model.replay().status is WorkflowStatus.RUNNING
    model.complete("b", "B")

    assert model.replay().result_json == '"a failed, then B"'
    model.close()


async def gather_of_chains(ctx: WorkflowContext) -> Any:
    async def chain(label: str) -> list[Any]:
        first = await work(ctx, f"{label}1")
        return [first, await work(ctx, f"{label}2", f"{label}2 after {first}")]

    return await asyncio.gather(chain("a"), chain("b"))


def test_a_gather_of_chains_advances_each_chain_on_its_own_completions() -> None:
    model = JournalModel(gather_of_chains)
    model.replay()
    model.complete("a1", "x")

    advanced = model.replay()

    assert [s.name for s in advanced.new_steps] == ["a2"]  # b1 still running
    model.complete("a2", "y")
    model.replay()
    model.complete("b1", "z")
    model.replay()
    model.complete("b2", "w")
    assert model.replay().result_json == canonical_json([["x", "y"], ["z", "w"]])
    model.close()


# --- non-determinism across activations -------------------------------------------------------------


async def asks_more_on_replay(ctx: WorkflowContext, extra: bool) -> Any:
    a = asyncio.ensure_future(work(ctx, "a"))
    b = asyncio.ensure_future(work(ctx, "b"))
    await asyncio.wait([a, b], return_when=asyncio.FIRST_COMPLETED)
    if extra:
        await work(ctx, "extra")
    return await asyncio.gather(a, b)


def test_code_that_takes_a_step_where_the_journal_records_none_fails_as_non_determinism() -> None:
    model = JournalModel(asks_more_on_replay, {"extra": False})
    model.replay()
    model.complete("a", "A")
    model.replay()  # activation 1: waits on b, asks for nothing
    model.complete("b", "B")

    outcome = replay(
        definition_of(asks_more_on_replay),
        "wf",
        {"extra": True},
        tuple(model.entries),
        now_us=model.clock_us,
        rng=SameDraw(),
        activations=model.activations,
        started_at_us=STARTED_AT_US,
    )

    assert outcome.status is WorkflowStatus.FAILED
    assert (outcome.error or "").startswith(
        "non-determinism at step 2: the workflow asked for task step 'extra' in activation 1"
    ), outcome.error
    model.close()


def test_a_legacy_journal_is_replayed_in_waves_and_gets_its_activations_recorded() -> None:
    """A journal from before activations: every step had finished before the workflow advanced."""
    definition = definition_of(gather_of_chains)
    first = replay(definition, "wf", {}, (), now_us=STARTED_AT_US)
    journal = [
        JournalEntry(s.number, s.kind, s.name, s.args_json, StepStatus.COMPLETED, canonical_json(s.name))
        for s in first.new_steps
    ]

    outcome = replay(definition, "wf", {}, journal, now_us=STARTED_AT_US, activations=None)

    assert [s.name for s in outcome.new_steps] == ["a2", "b2"]
    assert outcome.delivered == ((0, 1), (1, 1))
    assert outcome.activations == 2
