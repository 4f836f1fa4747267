"""Random compositions of races, timeouts, timers and gathers, advanced on any completion
(issue 12, item 3): at every activation a replay from scratch reaches the same decision as the
run kept since the start (what the workflow cache keeps), and never reports false non-determinism.

Hypothesis draws a tree of steps, sequences, gathers, races (``asyncio.wait(FIRST_COMPLETED)``,
losers cancelled or ignored), ``asyncio.wait_for`` timeouts, ``asyncio.timeout`` blocks,
``asyncio.sleep`` and ``ctx.random()``, then finishes running steps and fires timers one or
two at a time, in a drawn order, replaying after each batch, until the workflow returns.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from journal_model import JournalModel

from conveyor.coordinator.model import StepStatus, WorkflowStatus, canonical_json
from conveyor.coordinator.replay import TIMER_STEP_NAME
from conveyor.workflow import WorkflowContext

Tree = list[Any]


def label(tree: Any, counter: list[int]) -> Tree:
    if isinstance(tree, str):
        counter[0] += 1
        return [tree, f"{tree[0]}{counter[0]}"]
    kind, children, *flags = tree
    return [kind, [label(child, counter) for child in children], *flags]


def trees() -> st.SearchStrategy[Tree]:
    shapes = st.recursive(
        st.sampled_from(["step", "step", "instant", "sleep"]),
        lambda children: st.one_of(
            st.tuples(st.sampled_from(["seq", "gather"]), st.lists(children, min_size=1, max_size=3)).map(
                list
            ),
            st.tuples(st.just("race"), st.lists(children, min_size=2, max_size=3), st.booleans()).map(list),
            st.tuples(
                st.sampled_from(["wait_for", "deadline"]), st.lists(children, min_size=1, max_size=1)
            ).map(list),
        ),
        max_leaves=10,
    )
    return shapes.map(lambda shape: label(shape, [0]))


async def run_tree(ctx: WorkflowContext, tree: Tree, before: str) -> Any:
    """Each step's payload carries what the code saw just before it, so a replay that delivers an
    outcome at another point asks for different arguments (non-determinism)."""
    kind, body, *flags = tree
    if kind == "step":
        return await ctx.task("work", {"label": body, "before": before}, name=body)
    if kind == "instant":
        return f"instant {body} {ctx.random()}"
    if kind == "sleep":
        await asyncio.sleep(3)
        return f"slept {body}"
    if kind == "seq":
        results: list[Any] = []
        for child in body:
            results.append(await run_tree(ctx, child, canonical_json(results[-1:] or before)))
        return results
    if kind == "gather":
        return list(await asyncio.gather(*(run_tree(ctx, child, before) for child in body)))
    if kind == "race":
        (cancel_losers,) = flags
        racers = [asyncio.ensure_future(run_tree(ctx, child, before)) for child in body]
        done, pending = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        if cancel_losers:
            for loser in pending:
                loser.cancel()
        return ["won", next(racer for racer in racers if racer in done).result()]
    (child,) = body
    try:
        if kind == "wait_for":
            return await asyncio.wait_for(run_tree(ctx, child, before), timeout=5)
        async with asyncio.timeout(5):
            return await run_tree(ctx, child, before)
    except TimeoutError:
        return f"timed out {kind}"


async def composed(ctx: WorkflowContext, tree: Tree) -> Any:
    return await run_tree(ctx, tree, "start")


@settings(max_examples=300, deadline=None)
@given(tree=trees(), data=st.data())
def test_a_replay_from_scratch_decides_as_the_kept_run_at_every_activation(
    tree: Tree, data: st.DataObject
) -> None:
    model = JournalModel(composed, {"tree": tree})
    try:
        for _activation in range(200):
            outcome = model.replay()  # asserts the kept run decided the same
            assert outcome.error is None, outcome.error
            if outcome.status is not WorkflowStatus.RUNNING:
                break
            running = model.running()
            assert running, "a running workflow must wait on a step"
            count = data.draw(st.integers(1, min(2, len(running))), label="finishing together")
            for entry in data.draw(st.permutations(running), label="finish order")[:count]:
                if entry.name == TIMER_STEP_NAME:
                    model.finish(entry.number, StepStatus.COMPLETED, "null")
                else:
                    model.finish(entry.number, StepStatus.COMPLETED, canonical_json(f"done {entry.name}"))
        else:
            raise AssertionError("the workflow did not finish")
        assert outcome.status is WorkflowStatus.COMPLETED
        assert model.running() == []
    finally:
        model.close()
