"""The CLI as a new user meets it, against a live coordinator, on both databases.

Large arguments from a file or stdin (``--args @FILE``, ``--args -``) with a clear error for a
missing file or bad JSON; ``cancel A B C`` going past one already finished or unknown and
saying which; an idempotency key reused with other arguments; and ``--workflows mymodule`` /
``--handlers mymodule`` found in the current directory by the installed ``conveyor`` command.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from bench.cluster import ManagedProcess
from cli_runs import COMMAND, CliRun, environment, run_in_one_interpreter, run_once
from conveyor import WorkflowContext, workflow
from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from support import eventually, registry_of
from toolkit import MakeStack, task_rows, wait_finished


@workflow
async def total(ctx: WorkflowContext, numbers: list[int], label: str = "") -> str:
    return f"{label}{sum(numbers)}"


@workflow
async def parked(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("unserved", item)


WORKFLOWS = registry_of(total, parked)
#: Arguments no one would type on a command line.
LARGE = {"numbers": list(range(5000)), "label": "sum: "}


async def test_start_reads_large_arguments_from_a_file_or_stdin_and_says_what_is_wrong(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = await make_stack(WORKFLOWS)
    address = stack.server.address
    (tmp_path / "args.json").write_text(json.dumps(LARGE))
    (tmp_path / "broken.json").write_text('{"numbers": [1, 2,')
    commands = {
        "file": ["start", "total", "--args", f"@{tmp_path / 'args.json'}", "--wait", "--json"],
        "missing file": ["start", "total", "--args", f"@{tmp_path / 'nope.json'}"],
        "bad json file": ["start", "total", "--args", f"@{tmp_path / 'broken.json'}"],
    }
    lines = [[*line, "--coordinator", address] for line in commands.values()]
    runs = dict(zip(commands, await asyncio.to_thread(run_in_one_interpreter, lines), strict=True))
    from_stdin, bad_stdin = await asyncio.gather(
        asyncio.to_thread(
            run_once, "start", "total", "--args", "-", "--wait", "--json", "--coordinator", address,
            stdin=json.dumps({**LARGE, "label": "stdin: "}),
        ),
        asyncio.to_thread(run_once, "start", "total", "--args", "-", "--coordinator", address, stdin="[1,"),
    )  # fmt: skip

    assert runs["file"].code == 0, runs["file"]
    assert runs["file"].json()["result"] == f"sum: {sum(range(5000))}"
    assert from_stdin.code == 0, from_stdin
    assert from_stdin.json()["result"] == f"stdin: {sum(range(5000))}"
    assert runs["missing file"].code == 2
    assert runs["missing file"].stderr == (
        f"conveyor: cannot read --args file '{tmp_path / 'nope.json'}': No such file or directory\n"
    )
    assert runs["bad json file"].code == 2
    assert runs["bad json file"].stderr.startswith(
        f"conveyor: --args from {tmp_path / 'broken.json'} is not valid JSON: Expecting value"
    )
    assert bad_stdin.code == 2
    assert bad_stdin.stderr.startswith("conveyor: --args from stdin is not valid JSON")
    counts = await stack.client.count_workflows()
    assert counts[WorkflowStatus.COMPLETED] == 2 and sum(counts.values()) == 2


async def test_cancel_goes_past_finished_and_unknown_workflows_and_reports_each(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS)
    client = stack.client
    done = (await client.start_workflow("total", {"numbers": [1]})).workflow_id
    first, second = [s.workflow_id for s in await client.start_workflows([("parked", [1]), ("parked", [2])])]
    await wait_finished(client, done)

    async def parked_queued() -> bool:
        return len(await task_rows(stack.database_url)) == 2

    await eventually(parked_queued)
    commands = {
        "mixed": ["cancel", first, done, "no-such-id", second, "--reason", "cleanup", "--json"],
        "unknown only": ["cancel", "no-such-id", "another-one"],
    }
    lines = [[*line, "--coordinator", stack.server.address] for line in commands.values()]
    runs: dict[str, CliRun] = dict(
        zip(commands, await asyncio.to_thread(run_in_one_interpreter, lines), strict=True)
    )

    mixed = runs["mixed"]
    assert mixed.code == 1, mixed
    assert [w["id"] for w in mixed.json()] == [first, second]
    assert mixed.stderr.splitlines() == [
        f"conveyor: not cancelled: workflow {done} already finished (completed); nothing to cancel",
        "conveyor: not cancelled: no workflow with id 'no-such-id'",
        f"conveyor: cancelled 2 of 4; not cancelled: {done}, no-such-id",
    ]
    assert runs["unknown only"].code == 3
    assert "not cancelled: no-such-id, another-one" in runs["unknown only"].stderr
    for workflow_id in (first, second):
        cancelled = await client.get_workflow(workflow_id)
        assert (cancelled.status, cancelled.error) == (WorkflowStatus.CANCELLED, "cleanup")
    assert (await client.get_workflow(done)).status is WorkflowStatus.COMPLETED


async def test_start_with_a_key_reused_with_other_arguments_exits_1_saying_what_differs(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS)
    first = await stack.client.start_workflow("total", {"numbers": [1, 2]}, idempotency_key="nightly")
    commands = [
        ["start", "total", "--args", '{"numbers": [1, 2]}', "--idempotency-key", "nightly"],
        ["start", "total", "--args", '{"numbers": [1, 3]}', "--idempotency-key", "nightly"],
    ]
    lines = [[*line, "--coordinator", stack.server.address] for line in commands]
    same, other = await asyncio.to_thread(run_in_one_interpreter, lines)

    assert (same.code, same.stdout) == (0, f"{first.workflow_id}\n")
    assert other.code == 1
    assert "already started 'total' workflow" in other.stderr
    assert "(at $.numbers[1]: stored 2, this request has 3)" in other.stderr


MODULE = """
from conveyor import TaskContext, WorkflowContext, task_handler, workflow
from helper import GREETING  # a neighbour in the same directory


@workflow
async def hello(ctx: WorkflowContext, name: str) -> str:
    return await ctx.task("greet", name)


@task_handler("greet", context=True)
def greet(name: str, ctx: TaskContext) -> str:
    return f"{GREETING} {name} (step {ctx.step_number})"
"""


def spawn(directory: Path, name: str, *args: str) -> ManagedProcess:
    """The installed ``conveyor`` command run from ``directory``, as a user runs it there."""
    log_path = directory / f"{name}.log"
    env = {key: value for key, value in environment(120).items() if not key.startswith("CONVEYOR_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*COMMAND, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=directory,
            start_new_session=True,
        )
    return ManagedProcess(name, process, log_path)


async def test_the_coordinator_and_executor_find_modules_in_the_current_directory(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "mymodule.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "helper.py").write_text('GREETING = "hello"\n')
    coordinator = spawn(
        tmp_path, "coordinator", "coordinator", "--db", database_url, "--workflows", "mymodule",
        "--listen", "127.0.0.1:0",
    )  # fmt: skip
    executor: ManagedProcess | None = None
    try:
        address = await asyncio.to_thread(coordinator.wait_for_address, 60)
        executor = spawn(
            tmp_path, "executor", "executor", "--coordinator", address, "--handlers", "mymodule", "--no-llm"
        )
        async with AsyncClient(address) as client:
            started = await client.start_workflow("hello", {"name": "ada"})
            finished = await client.wait(started.workflow_id, timeout=60, poll_interval=0.1)
        assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, "hello ada (step 0)")
        file_path = await asyncio.to_thread(
            run_once, "coordinator", "--db", database_url, "--workflows", "mymodule.py", cwd=tmp_path
        )
        assert file_path.code == 2
        assert "'mymodule.py' is a file path; give a module name ('mymodule')" in file_path.stderr
    finally:
        for process in (executor, coordinator):
            if process is not None:
                process.stop(timeout=20)
