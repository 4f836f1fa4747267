"""``conveyor purge`` against a live coordinator, on both databases: a dry run, a status filter,
a duration ago, and bad input."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from cli_runs import CliRun, run_in_one_interpreter
from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from support import registry_of
from toolkit import MakeStack, wait_finished


@workflow
async def instant(ctx: WorkflowContext, value: int) -> int:
    return value


@workflow
async def broken(ctx: WorkflowContext, item: int) -> int:
    raise ValueError(f"broken #{item}")


async def test_purge_from_the_command_line(make_stack: MakeStack) -> None:
    stack = await make_stack(registry_of(instant, broken))
    client = stack.client
    done = [s.workflow_id for s in await client.start_workflows([("instant", [i]) for i in range(3)])]
    failed = (await client.start_workflow("broken", [0])).workflow_id
    for workflow_id in [*done, failed]:
        await wait_finished(client, workflow_id)
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    commands = {
        "dry run": ["purge", "--finished-before", soon, "--dry-run", "--json"],
        "a week ago": ["purge", "--finished-before", "7d"],
        "failed only": ["purge", "--finished-before", soon, "--status", "failed"],
        "the rest": ["purge", "--finished-before", soon, "--json"],
        "no time": ["purge"],
        "bad time": ["purge", "--finished-before", "yesterday"],
        "running": ["purge", "--finished-before", soon, "--status", "running"],
    }
    lines = [[*line, "--coordinator", stack.server.address] for line in commands.values()]
    runs: dict[str, CliRun] = dict(
        zip(commands, await asyncio.to_thread(run_in_one_interpreter, lines, columns=200), strict=True)
    )

    dry = runs["dry run"]
    assert dry.code == 0, dry
    assert {**dry.json(), "sample_workflow_ids": None} == {
        "matched": 4,
        "purged": 0,
        "sample_workflow_ids": None,
        "dry_run": True,
    }
    assert set(dry.json()["sample_workflow_ids"]) == {*done, failed}
    assert runs["a week ago"].stdout.startswith("purged 0 finished workflow(s)")
    assert runs["failed only"].stdout.startswith("purged 1 finished workflow(s)")
    assert runs["the rest"].json()["purged"] == 3
    assert runs["no time"].code == 2 and "--finished-before" in runs["no time"].stderr
    assert runs["bad time"].code == 2 and "duration ago" in runs["bad time"].stderr
    assert runs["running"].code == 2
    assert await client.count_workflows() == {status: 0 for status in WorkflowStatus}
