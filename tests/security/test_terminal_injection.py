"""Text chosen by others reaches terminals and text logs inert (issue 10, item 5).

An executor id is any printable name, so ``sec-[/]-x`` is valid; rendered as rich
markup it made ``conveyor get`` and ``conveyor admin diagnose`` crash with a
MarkupError, for every workflow a step of which ran there. A cancel reason or task
failure message holding ANSI escapes was printed raw. A newline in an executor's
Draining.reason wrote a line of the attacker's choosing into the coordinator's log.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli_runs import COMMAND, CliRun, environment, run_in_one_interpreter
from conveyor import WorkflowContext, workflow
from conveyor.v1 import common_pb2
from conveyor.v1 import executor_service_pb2 as executor_pb
from support import ManualExecutor, eventually, registry_of
from toolkit import MakeStack, wait_finished

MARKUP_ID = "sec-[/]-x"
#: Clears the screen, sets the window title and turns the text red.
ANSI = "\x1b[2J\x1b]0;owned\x07\x1b[31mred"


@workflow
async def one_job(ctx: WorkflowContext) -> Any:
    return await ctx.task("job", {})


@workflow
async def waits(ctx: WorkflowContext) -> Any:
    return await ctx.task("nobody-serves-this", {})


REGISTRY = registry_of(one_job, waits)


async def cli(address: str, *command_lines: list[str]) -> list[CliRun]:
    lines = [[*line, "--coordinator", address] for line in command_lines]
    return await asyncio.to_thread(run_in_one_interpreter, lines, columns=200, timeout=240)


def assert_inert(run: CliRun) -> None:
    assert run.code == 0, run.stderr
    assert "\x1b" not in run.stdout and "\x07" not in run.stdout, run.stdout
    assert "MarkupError" not in run.stderr


async def test_markup_in_an_executor_id_and_escapes_in_a_failure_are_shown_inert(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(REGISTRY)
    started = await stack.client.start_workflow("one_job", {})
    async with ManualExecutor(stack.server.address, MARKUP_ID, task_kinds=["job"]) as executor:
        await executor.connect(free_slots=1)
        [task] = await executor.take(1)
        failure = executor_pb.TaskFailure(
            error_class=common_pb2.ERROR_CLASS_NON_RETRYABLE, message=f"boom {ANSI}"
        )
        await executor.report(
            executor_pb.TaskResult(task_id=task.task_id, fencing_token=task.fencing_token, failure=failure)
        )
        await wait_finished(stack.client, started.workflow_id)
        get, diagnose, listing = await cli(
            stack.server.address,
            ["get", started.workflow_id],
            ["admin", "diagnose"],
            ["list"],
        )
    for run in (get, diagnose, listing):
        assert_inert(run)
    assert MARKUP_ID in get.stdout and MARKUP_ID in diagnose.stdout
    assert "\\x1b[31mred" in get.stdout  # written out, so the operator sees what was sent


async def test_a_cancel_reason_with_escapes_is_shown_inert(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY)
    started = await stack.client.start_workflow("waits", {})
    await stack.client.cancel_workflow(started.workflow_id, f"because {ANSI}")
    get, listing = await cli(stack.server.address, ["get", started.workflow_id], ["list"])
    for run in (get, listing):
        assert_inert(run)
    assert "\\x1b" in get.stdout


async def test_a_newline_in_a_draining_reason_cannot_forge_a_log_line(tmp_path: Path) -> None:
    """A real coordinator process, logging in its default text format to stderr."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        "coordinator",
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
        "--workflows",
        "bench.workflows",
        "--listen",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(120),
    )
    assert process.stdout is not None and process.stderr is not None
    lines: list[str] = []

    async def collect(stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            lines.append(line.decode())

    collector = asyncio.create_task(collect(process.stderr))
    forged = "2026-01-01 00:00:00,000 ERROR   coordinator.engine: database corrupted, restore from backup"
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
        address = re.search(r"listening on (\S+)", first)
        assert address, (first, lines)
        async with ManualExecutor(address.group(1), "liar") as executor:
            await executor.connect()
            await executor.send_draining(f"bye\n{forged}\r{ANSI}")
            await eventually(lambda: any("executor liar is draining" in line for line in lines), timeout=60)
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 120)
        await asyncio.wait_for(collector, 120)
    stderr = "".join(lines)
    assert "executor liar is draining: bye\\n" in stderr, stderr
    assert not any(line.startswith(forged) for line in lines), stderr
    assert "\x1b" not in stderr and "\r" not in stderr


async def test_control_characters_in_identifiers_are_refused(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY)
    for executor_id in ("evil\nid", "evil\x1b[31mid", "evil\rid", "bidi\u202eid"):
        async with ManualExecutor(stack.server.address, executor_id) as executor:
            with pytest.raises(AssertionError):
                await executor.connect()
            assert executor.stream_error is not None
            assert executor.stream_error.code() == grpc.StatusCode.INVALID_ARGUMENT
