"""Safe code changes: ``ctx.patched`` keeps workflows in flight on their old path, and
``replay-check`` finds, before a deploy, the workflows a change would break — on both databases.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.model import StepKind, StepStatus
from conveyor.coordinator.model import WorkflowStatus as ReplayStatus
from conveyor.coordinator.replay import JournalEntry, ReplayOutcome
from conveyor.coordinator.replay_check import Replayer, check_database
from support import eventually, registry_of
from toolkit import MakeStack, restart_coordinator, step_rows, wait_finished


@workflow(name="review")
async def review_v1(ctx: WorkflowContext) -> str:
    first = await ctx.wait_for_signal("first")
    second = await ctx.wait_for_signal("second")
    return f"v1:{first}:{second}"


@workflow(name="review")
async def review_v2_unguarded(ctx: WorkflowContext) -> str:
    first = await ctx.wait_for_signal("initial")  # renamed: journals of v1 say "first" here
    second = await ctx.wait_for_signal("second")
    return f"v2:{first}:{second}"


# The module replay-check imports from the current directory, as an operator would run it.
REVIEW_V2_GUARDED = """
from conveyor import WorkflowContext, workflow


@workflow(name="review")
async def review_v2_guarded(ctx: WorkflowContext) -> str:
    renamed = ctx.patched("rename-first")
    first = await ctx.wait_for_signal("initial" if renamed else "first")
    second = await ctx.wait_for_signal("second")
    return f"{'new' if renamed else 'old'}:{first}:{second}"
"""


def guarded_registry() -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(REVIEW_V2_GUARDED, "review_v2_guarded.py", "exec"), namespace)
    return registry_of(namespace["review_v2_guarded"])


# ----------------------------------------------------------------------------- ctx.patched


def as_journal(outcome: ReplayOutcome, results: dict[int, str]) -> list[JournalEntry]:
    """The journal the coordinator would store for ``outcome``'s new steps, some completed."""
    return [
        JournalEntry(
            step.number,
            step.kind,
            step.name,
            step.args_json,
            StepStatus.COMPLETED
            if step.result_json is not None or step.number in results
            else StepStatus.RUNNING,
            step.result_json if step.result_json is not None else results.get(step.number),
        )
        for step in outcome.new_steps
    ]


def test_patched_is_true_on_new_runs_and_false_when_replaying_older_journals() -> None:
    old_run = Replayer(registry_of(review_v1)).replay("review", [], [])
    old_journal = as_journal(old_run, {0: '"a"'})
    old_journal += as_journal(Replayer(registry_of(review_v1)).replay("review", [], old_journal), {})
    guarded = Replayer(guarded_registry())

    in_flight = guarded.replay("review", [], old_journal)
    fresh = guarded.replay("review", [], [])

    # The old journal replays on the new code without a new step: the old path is taken.
    assert in_flight.status is ReplayStatus.RUNNING and in_flight.error is None
    assert in_flight.new_steps == ()
    # A new run journals the marker first, then waits for the renamed signal.
    assert [(s.kind, s.name) for s in fresh.new_steps] == [
        (StepKind.PATCH, "rename-first"),
        (StepKind.SIGNAL, "initial"),
    ]
    # ... and replaying that journal takes the new path again.
    new_journal = as_journal(fresh, {1: '"x"'})
    again = guarded.replay("review", [], new_journal)
    assert [(s.kind, s.name) for s in again.new_steps] == [(StepKind.SIGNAL, "second")]
    # Without the guard the old journal is non-deterministic at step 0, and replay says where.
    broken = Replayer(registry_of(review_v2_unguarded)).replay("review", [], old_journal)
    assert broken.status is ReplayStatus.FAILED
    assert broken.nondeterministic_step == 0
    assert "non-determinism at step 0" in (broken.error or "")


async def test_a_patched_deploy_keeps_workflows_in_flight_on_the_old_path(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = await make_stack(registry_of(review_v1))
    in_flight = [(await stack.client.start_workflow("review", {})).workflow_id for _ in range(3)]
    for workflow_id in in_flight:
        await stack.client.signal_workflow(workflow_id, "first", "a")

    async def all_wait_for_second() -> bool:
        for workflow_id in in_flight:
            rows = await step_rows(stack.database_url, workflow_id)
            if [(row.name, row.status) for row in rows] != [("first", "completed"), ("second", "running")]:
                return False
        return True

    await eventually(all_wait_for_second)

    # Before the deploy: replay-check finds that the unguarded change would break all three at step 0.
    unguarded = await asyncio.to_thread(check_database, stack.database_url, registry_of(review_v2_unguarded))
    assert not unguarded.ok
    assert (unguarded.by_name["review"].checked, unguarded.by_name["review"].nondeterministic) == (3, 3)
    assert dict(unguarded.by_name["review"].steps) == {0: 3}
    assert unguarded.by_name["review"].examples[0][0] in in_flight
    # The guarded change passes, from the command line too (module found in the current directory).
    (tmp_path / "review_v2.py").write_text(textwrap.dedent(REVIEW_V2_GUARDED))
    cli = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "conveyor.cli",
            "replay-check",
            "--workflows",
            "review_v2",
            "--db",
            stack.database_url,
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout)
    assert (report["ok"], report["checked"], report["by_name"]["review"]["nondeterministic"]) == (True, 3, 0)

    await restart_coordinator(stack, guarded_registry())
    fresh = (await stack.client.start_workflow("review", {})).workflow_id
    await stack.client.signal_workflow(fresh, "initial", "x")
    for workflow_id in [*in_flight, fresh]:
        await stack.client.signal_workflow(workflow_id, "second", "b")
    results = [await wait_finished(stack.client, workflow_id) for workflow_id in [*in_flight, fresh]]

    assert [r.status for r in results] == [WorkflowStatus.COMPLETED] * 4, [r.error for r in results]
    assert [r.result for r in results] == ["old:a:b", "old:a:b", "old:a:b", "new:x:b"]
    fresh_steps = await step_rows(stack.database_url, fresh)
    assert [(row.kind, row.name) for row in fresh_steps] == [
        ("patch", "rename-first"),
        ("signal", "initial"),
        ("signal", "second"),
    ]


async def test_replay_check_reports_code_that_no_longer_registers_a_stored_workflow(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(registry_of(review_v1))
    await stack.client.start_workflow("review", {})

    @workflow
    async def unrelated(ctx: WorkflowContext) -> None:
        return None

    report = await asyncio.to_thread(check_database, stack.database_url, registry_of(unrelated))

    assert not report.ok
    assert dict(report.unregistered) == {"review": 1}


@pytest.mark.parametrize("sample", [1, 2])
async def test_replay_check_samples_at_most_the_number_asked(make_stack: MakeStack, sample: int) -> None:
    stack = await make_stack(registry_of(review_v1))
    for _ in range(3):
        await stack.client.start_workflow("review", {})

    report = await asyncio.to_thread(
        check_database, stack.database_url, registry_of(review_v1), sample=sample
    )

    assert report.ok and report.checked == sample
