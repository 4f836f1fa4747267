"""Replay reproduces the original interleaving of any composition of steps (issue 9, item 8).

Hypothesis generates random trees of sequential blocks (helper coroutines awaited in
turn), parallel blocks (``asyncio.gather`` or tasks), task steps and instant steps
(``ctx.random()``), and drives the workflow as the coordinator did before activations
were recorded (journals without ``delivered_in``, replayed in waves): replay, start the
new steps, complete them one by one in a drawn order, replaying after every completion,
until the workflow returns. Every replay must agree with the journal (no false
non-determinism, also when replayed while a step of the wave still runs), and the
workflow's result must be what the tree computes. The model of today, advancing on
any completion, is tested in ``test_activations.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.coordinator.model import StepKind, StepStatus, WorkflowStatus, canonical_json
from conveyor.coordinator.replay import JournalEntry, NewStep, ReplayOutcome, replay
from conveyor.workflow import WorkflowContext, WorkflowDefinition, WorkflowRegistry

NOW_US = 1_700_000_000_000_000

# A tree is ["step", label] | ["instant", label] | ["seq", [children]] | ["gather", [children]]
# | ["tasks", [children]] (the children started with create_task, then awaited in order).
Tree = list[Any]


def label(tree: Any, counter: list[int]) -> Tree:
    """Give every leaf a unique label, in tree order (drawn shapes carry bare leaf kinds)."""
    if isinstance(tree, str):
        counter[0] += 1
        return [tree, f"{tree[0]}{counter[0]}"]
    kind, children = tree
    return [kind, [label(child, counter) for child in children]]


def trees() -> st.SearchStrategy[Tree]:
    shapes = st.recursive(
        st.sampled_from(["step", "instant"]),
        lambda children: st.tuples(
            st.sampled_from(["seq", "gather", "tasks"]), st.lists(children, min_size=1, max_size=4)
        ).map(list),
        max_leaves=14,
    )
    return shapes.map(lambda shape: label(shape, [0]))


async def run_tree(ctx: WorkflowContext, tree: Tree, before: str) -> Any:
    """Each step's payload carries the result seen just before it, so a replay that hands a step a
    result at the wrong point asks for different arguments (and fails as non-determinism)."""
    kind, body = tree
    if kind == "step":
        return await ctx.task("work", {"label": body, "before": before}, name=body)
    if kind == "instant":
        ctx.random()
        return f"instant {body}"
    if kind == "seq":
        results: list[Any] = []
        for child in body:
            results.append(await run_tree(ctx, child, canonical_json(results[-1:] or before)))
        return results
    if kind == "gather":
        return list(await asyncio.gather(*(run_tree(ctx, child, before) for child in body)))
    tasks = [asyncio.create_task(run_tree(ctx, child, before)) for child in body]
    return [await task for task in tasks]


async def tree_workflow(ctx: WorkflowContext, tree: Tree) -> Any:
    return await run_tree(ctx, tree, "start")


def expected(tree: Tree) -> Any:
    kind, body = tree
    if kind == "step":
        return f"done {body}"
    if kind == "instant":
        return f"instant {body}"
    return [expected(child) for child in body]


def leaves(tree: Tree, kind: str) -> list[str]:
    if tree[0] in ("step", "instant"):
        return [tree[1]] if tree[0] == kind else []
    return [label for child in tree[1] for label in leaves(child, kind)]


def definition() -> WorkflowDefinition:
    registry = WorkflowRegistry()
    registry.register(tree_workflow)
    found = registry.get("tree_workflow")
    assert found is not None
    return found


DEFINITION = definition()


def replay_now(tree: Tree, journal: list[JournalEntry]) -> ReplayOutcome:
    outcome = replay(DEFINITION, "wf", {"tree": tree}, journal, now_us=NOW_US, rng=random.Random(7))
    return dataclasses.replace(outcome, delivered=(), activations=None)  # what this test compares


def entry(step: NewStep, status: StepStatus, result_json: str | None = None) -> JournalEntry:
    return JournalEntry(step.number, step.kind, step.name, step.args_json, status, result_json)


@settings(max_examples=300, deadline=None)
@given(tree=trees(), data=st.data())
def test_replay_after_every_completion_order_agrees_with_the_journal(tree: Tree, data: st.DataObject) -> None:
    journal: list[JournalEntry] = []
    steps: dict[int, NewStep] = {}
    for _wave in range(200):
        outcome = replay_now(tree, journal)
        assert outcome.error is None, outcome.error
        if outcome.status is not WorkflowStatus.RUNNING:
            # A finished replay journals the ctx.random() values its last run took.
            journal.extend(entry(step, StepStatus.COMPLETED, step.result_json) for step in outcome.new_steps)
            break
        assert outcome.new_steps, "a workflow with nothing running must ask for a step"
        assert outcome.new_steps[0].number == len(journal)
        for step in outcome.new_steps:
            steps[step.number] = step
            done = step.result_json is not None  # ctx.random(): complete when taken
            journal.append(
                entry(step, StepStatus.COMPLETED, step.result_json)
                if done
                else entry(step, StepStatus.RUNNING)
            )
        running = [e.number for e in journal if e.status is StepStatus.RUNNING]
        order = data.draw(st.permutations(running), label="completion order")
        for count, number in enumerate(order, start=1):
            step = steps[number]
            journal[number] = entry(step, StepStatus.COMPLETED, canonical_json(f"done {step.name}"))
            if count < len(order):
                # Replayed now, the old journal is converted: what finished is delivered at once.
                early = replay_now(tree, journal)
                assert (early.status, early.error) == (WorkflowStatus.RUNNING, None), early
    else:
        raise AssertionError("the workflow did not finish")

    assert (outcome.status, outcome.result_json) == (WorkflowStatus.COMPLETED, canonical_json(expected(tree)))
    assert sorted(e.name for e in journal if e.kind is StepKind.TASK) == sorted(leaves(tree, "step"))
    assert len([e for e in journal if e.kind is StepKind.RANDOM]) == len(leaves(tree, "instant"))
    final = ReplayOutcome(WorkflowStatus.COMPLETED, result_json=outcome.result_json)
    assert replay_now(tree, journal) == final, "replaying the finished journal must give the same result"
