"""Every client command of the ``conveyor`` CLI against a live coordinator, on both databases.

The commands run as a user runs them (the installed entry point, in a subprocess),
in one interpreter one after another to spare the start-up cost of each: their
output, JSON and exit codes are checked, and so is what they did to the workflows.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from cli_runs import CliRun, run_in_one_interpreter
from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from support import Stack, eventually, registry_of
from toolkit import MakeStack, task_rows, wait_finished


@workflow
async def instant(ctx: WorkflowContext, value: int) -> int:
    return value


@workflow
async def broken(ctx: WorkflowContext, item: int) -> int:
    raise ValueError(f"broken #{item}")


@workflow
async def parked(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("unserved", item)


WORKFLOWS = registry_of(instant, broken, parked)


async def run_commands(address: str, command_lines: list[list[str]]) -> list[CliRun]:
    lines = [[*line, "--coordinator", address] for line in command_lines]
    return await asyncio.to_thread(run_in_one_interpreter, lines, columns=200, timeout=240)


async def prepare(stack: Stack) -> dict[str, Any]:
    client = stack.client
    done = (await client.start_workflow("instant", {"value": 5})).workflow_id
    failed = (await client.start_workflow("broken", {"item": 0})).workflow_id
    parked_ids = [s.workflow_id for s in await client.start_workflows([("parked", [i]) for i in range(3)])]
    await wait_finished(client, done)
    await wait_finished(client, failed)

    async def parked_queued() -> bool:
        return len(await task_rows(stack.database_url)) == 3

    await eventually(parked_queued)
    return {"done": done, "failed": failed, "parked": parked_ids}


async def test_every_client_command_works_against_a_live_coordinator(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    ids = await prepare(stack)
    done, failed, (first, second, third) = ids["done"], ids["failed"], ids["parked"]
    commands: dict[str, list[str]] = {
        "start --wait --json": ["start", "instant", "--args", '{"value": 3}', "--wait", "--json"],
        "start --wait failing": ["start", "broken", "--args", '{"item": 1}', "--wait"],
        "start": ["start", "instant", "--args", "[1]", "--idempotency-key", "k-1"],
        "get --json": ["get", done, "--json"],
        "get missing": ["get", "nope"],
        "list --json": ["list", "--status", "completed", "--name", "instant", "--json"],
        "list paged": ["list", "--name", "parked", "--page-size", "2"],
        "count --json": ["count", "--name", "parked", "--json"],
        "wait mixed": ["wait", done, failed],
        "wait --within": ["wait", first, "--within", "0.3"],
        "explain": ["explain", first],
        "explain --json": ["explain", failed, "--json"],
        "cancel dry run": ["cancel", "--all", "--name", "parked", "--dry-run", "--json"],
        "cancel one": ["cancel", first, "--reason", "operator said so"],
        "cancel again": ["cancel", first],
        "cancel nothing": ["cancel"],
        "cancel id with a filter": ["cancel", second, "--dry-run"],
        "cancel bulk": ["cancel", "--all", "--name", "parked", "--limit", "1"],
        "diagnose --json": ["admin", "diagnose", "--json"],
        "diagnose": ["admin", "diagnose"],
        "fail-pending": ["admin", "fail-pending", "--all", "--json"],
        "bump-epoch": ["admin", "bump-epoch", "--reason", "deploy", "--json"],
        "clear-task-queue": ["admin", "clear-task-queue", "--all"],
        "clear-replay-queue": ["admin", "clear-replay-queue", "--shard", "0"],
        "start unknown": ["start", "nosuch"],
        "bad status": ["list", "--status", "bogus"],
    }
    runs = dict(zip(commands, await run_commands(stack.server.address, list(commands.values())), strict=True))

    def ok(name: str) -> CliRun:
        run = runs[name]
        assert run.code == 0, (name, run)
        return run

    started = ok("start --wait --json").json()
    assert (started["status"], started["result"]) == ("completed", 3)
    assert runs["start --wait failing"].code == 5
    assert "broken #1" in runs["start --wait failing"].stdout
    assert re.fullmatch(r"[0-9a-f]{32}\n", ok("start").stdout)
    assert ok("get --json").json()["result"] == 5
    assert (runs["get missing"].code, runs["get missing"].stderr) == (
        3,
        "conveyor: no workflow with id 'nope'\n",
    )
    assert done in [w["id"] for w in ok("list --json").json()["workflows"]]
    assert "more: add --page-token" in ok("list paged").stdout
    assert ok("count --json").json() == {"running": 3, "completed": 0, "failed": 0, "cancelled": 0}
    assert runs["wait mixed"].code == 5
    assert runs["wait --within"].code == 6 and first in runs["wait --within"].stderr
    assert "no live executor holds shard" in ok("explain").stdout
    explained = ok("explain --json").json()
    assert (explained["situation"], explained["workflow"]["id"]) == ("finished", failed)
    assert ok("cancel dry run").json() == {
        "matched": 3,
        "cancelled": 0,
        "sample_workflow_ids": [first, second, third],
        "dry_run": True,
    }
    assert first in ok("cancel one").stdout
    assert runs["cancel again"].code == 1 and "already finished" in runs["cancel again"].stderr
    assert runs["cancel nothing"].code == 2 and "--shard N or --all" in runs["cancel nothing"].stderr
    assert runs["cancel id with a filter"].code == 2
    assert ok("cancel bulk").stdout.startswith("cancelled 1 running workflow(s)")
    assert ok("diagnose --json").json()["shard_count"] == 100
    assert "invariants hold" in ok("diagnose").stdout
    assert ok("fail-pending").json() == {"failed_tasks": 1}
    assert ok("bump-epoch").json()["epoch"] == "2"  # int64 travels as a JSON string
    assert ok("clear-task-queue").stdout.startswith("cleared 0 tasks")
    assert ok("clear-replay-queue").stdout.startswith("cleared 0 replay-queue entries")
    assert runs["start unknown"].code == 2 and "unknown workflow 'nosuch'" in runs["start unknown"].stderr
    assert runs["bad status"].code == 2

    client = stack.client
    assert (await client.get_workflow(first)).error == "operator said so"
    assert (await client.get_workflow(second)).status is WorkflowStatus.CANCELLED
    assert (await wait_finished(client, third)).status is WorkflowStatus.FAILED
