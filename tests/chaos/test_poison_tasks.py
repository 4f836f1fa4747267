"""Poison tasks: a handler that always fails, and one that kills the executor running it.

Each in turn sits at the head of the only shard's FIFO queue, with research
workflows queued behind it. It must end failed after its attempts (a crash spends
one through the lease expiring), while the steps behind it run meanwhile; crashed
executors are replaced, as a supervisor would.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import sqlalchemy as sa

from bench.chaos.cluster import ChaosCluster, ChaosSettings
from bench.chaos.poison import ALWAYS_FAILS, CRASHES_EXECUTOR, POISON_RETRY
from bench.chaos.workload import Workload
from conveyor.client.client import AsyncClient
from conveyor.client.models import Workflow
from conveyor.coordinator.model import StepStatus
from conveyor.coordinator.store.schema import steps, workflows
from toolkit import fetch

pytestmark = pytest.mark.slow


async def finished(client: AsyncClient, workflow_id: str) -> Workflow | None:
    workflow = await client.get_workflow(workflow_id, include_steps=True)
    return workflow if workflow.status.finished else None


async def steps_completed_while_running(database_url: str, workflow_id: str) -> int:
    """Steps of other workflows completed between ``workflow_id``'s start and its end."""
    poison = sa.select(workflows.c.created_at, workflows.c.completed_at).where(workflows.c.id == workflow_id)
    [(started, ended)] = await fetch(database_url, poison)
    others = sa.select(sa.func.count()).where(
        steps.c.workflow_id != workflow_id,
        steps.c.status == StepStatus.COMPLETED,
        steps.c.completed_at > started,
        steps.c.completed_at < ended,
    )
    [(count,)] = await fetch(database_url, others)
    return int(count)


async def test_poison_tasks_fail_after_their_attempts_without_blocking_their_shard(
    chaos_settings: ChaosSettings,
) -> None:
    outcomes: dict[str, Workflow] = {}
    # One shard: the poisoned task is the head of the one FIFO queue everything waits in.
    with ChaosCluster(replace(chaos_settings, poison=True, shards=1)) as chaos:
        async with chaos.client() as client:
            for kind in (ALWAYS_FAILS, CRASHES_EXECUTOR):
                poisoned = await client.start_workflow("poisoned", {"kind": kind})
                behind = Workload(150, f"behind {kind}")
                await behind.start(client)
                while (outcome := await finished(client, poisoned.workflow_id)) is None:
                    await chaos.replace_crashed_executors()
                    await asyncio.sleep(0.1)
                outcomes[kind] = outcome
                await behind.wait_until_finished(client, timeout=180)
        report = chaos.check()
        overtaken = {
            kind: await steps_completed_while_running(chaos.settings.database_url, outcome.id)
            for kind, outcome in outcomes.items()
        }

    assert report.ok, report.render()
    assert report.by_status == {"completed": 300, "failed": 2}
    failing, crashing = outcomes[ALWAYS_FAILS], outcomes[CRASHES_EXECUTOR]
    assert failing.steps[0].attempt == crashing.steps[0].attempt == POISON_RETRY.max_attempts
    assert "fails on every attempt" in (failing.error or "")
    # Each attempt killed an executor; the last one's lost lease failed the step.
    assert "lease expired" in (crashing.error or "")
    assert [fault.kind for fault in report.faults] == ["executor crashed"] * POISON_RETRY.max_attempts
    # The queue went on past its poisoned head.
    assert overtaken[ALWAYS_FAILS] > 0 and overtaken[CRASHES_EXECUTOR] > 0, overtaken


async def test_a_task_that_crashes_its_executor_fails_after_its_attempts_when_restarted_under_the_same_id(
    chaos_settings: ChaosSettings,
) -> None:
    """The executor is restarted under its fixed id, well within the lease (30 s): the new
    process's Hello does not list the task the old one died running. That task was
    delivered, so it spends an attempt (it is not "undelivered"), and the poison ends
    failed after its max_attempts instead of killing the executor forever."""
    settings = replace(chaos_settings, poison=True, shards=1, executors=1, lease_ttl=30.0)
    crashes = 0
    with ChaosCluster(settings) as chaos:
        async with chaos.client() as client:
            poisoned = await client.start_workflow("poisoned", {"kind": CRASHES_EXECUTOR})
            behind = Workload(20, "behind the poison")
            await behind.start(client)
            while (outcome := await finished(client, poisoned.workflow_id)) is None:
                crashes += len(await chaos.restart_crashed_executors_in_place())
                # Each crash is one attempt: more crashes than attempts means it loops forever.
                assert crashes <= POISON_RETRY.max_attempts, (
                    f"the poison crashed its executor {crashes} times"
                )
                await asyncio.sleep(0.1)
            await behind.wait_until_finished(client, timeout=180)
        report = chaos.check()

    assert report.ok, report.render()
    assert outcome.status.value == "failed"
    assert outcome.steps[0].attempt == POISON_RETRY.max_attempts
    assert "restarted during attempt" in (outcome.error or ""), outcome.error
    assert report.by_status == {"completed": 20, "failed": 1}
