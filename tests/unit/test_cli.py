"""The ``conveyor`` command as a user runs it: the installed entry point, in subprocesses.

Starting the CLI imports gRPC, SQLAlchemy and the anthropic SDK (over a second of CPU),
so the runs start in parallel once per module, and the subcommands' ``--help`` pages
come from one subprocess that runs the entry point script once per command line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ENTRY_POINT = Path(sys.executable).with_name("conveyor")
COMMAND = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "conveyor.cli"]
ENV = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}

SUBCOMMANDS = [
    "coordinator",
    "executor",
    "simulator",
    "start",
    "get",
    "list",
    "count",
    "wait",
    "explain",
    "cancel",
    "admin fail-pending",
    "admin bump-epoch",
    "admin clear-replay-queue",
    "admin clear-task-queue",
    "admin diagnose",
]
CLIENT_COMMANDS = [
    ["get", "wf-123"],
    ["admin", "diagnose"],
    ["explain", "wf-123"],
    ["cancel", "--all", "--dry-run"],
]

#: Runs the entry point once per command line in this interpreter; prints one JSON result per run.
HELP_PAGES_SCRIPT = """
import contextlib, io, json, runpy, sys
entry_point, command_lines = sys.argv[1], json.loads(sys.argv[2])
for args in command_lines:
    sys.argv = ["conveyor", *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if entry_point:
                runpy.run_path(entry_point, run_name="__main__")
            else:
                runpy.run_module("conveyor.cli", run_name="__main__")
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}))
"""


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def conveyor(*args: str) -> Run:
    result = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=120, env=ENV)
    return Run(result.returncode, result.stdout, result.stderr)


def help_pages() -> dict[str, Run]:
    command_lines = [[*subcommand.split(), "--help"] for subcommand in SUBCOMMANDS]
    entry_point = str(ENTRY_POINT) if ENTRY_POINT.exists() else ""
    result = subprocess.run(
        [sys.executable, "-c", HELP_PAGES_SCRIPT, entry_point, json.dumps(command_lines)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    pages = [json.loads(line) for line in result.stdout.splitlines()]
    return {
        subcommand: Run(page["code"], page["stdout"], page["stderr"])
        for subcommand, page in zip(SUBCOMMANDS, pages, strict=True)
    }


def unreachable(command: list[str]) -> str:
    return " ".join(command) + " @unreachable"


@pytest.fixture(scope="module")
def closed_address() -> Iterator[str]:
    """A local port that is bound but not listening: connections are refused, and no one else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def runs(closed_address: str) -> dict[str, Run]:
    """Every invocation the tests check, run in parallel."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        pages = pool.submit(help_pages)
        top_level = pool.submit(conveyor, "--help")
        clients = {
            unreachable(command): pool.submit(
                conveyor, *command, "--coordinator", closed_address, "--timeout", "3"
            )
            for command in CLIENT_COMMANDS
        }
        return {"--help": top_level.result(), **pages.result(), **{k: f.result() for k, f in clients.items()}}


def test_top_level_help_lists_every_command_and_how_to_get_examples(runs: dict[str, Run]) -> None:
    result = runs["--help"]

    assert result.returncode == 0, result.stderr
    for command in (
        "coordinator",
        "executor",
        "simulator",
        "start",
        "get",
        "list",
        "wait",
        "explain",
        "cancel",
        "admin",
    ):
        assert f"conveyor {command}" in result.stdout
    assert "conveyor start NAME --args JSON" in result.stdout
    assert "--help` for a command's options and an example" in result.stdout


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_subcommand_help_exits_0_and_shows_an_example(runs: dict[str, Run], subcommand: str) -> None:
    result = runs[subcommand]

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: conveyor {subcommand} ")
    assert "example:" in result.stdout, f"`conveyor {subcommand} --help` shows no example"
    example = result.stdout.split("example:", 1)[1]
    assert f"conveyor {subcommand} " in example, f"the example does not show `conveyor {subcommand}`"


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=" ".join)
def test_client_command_against_an_address_where_nothing_listens_exits_4_naming_the_address(
    runs: dict[str, Run], closed_address: str, command: list[str]
) -> None:
    result = runs[unreachable(command)]

    assert result.returncode == 4, (result.stdout, result.stderr)
    assert f"cannot reach the coordinator at {closed_address}" in result.stderr
    assert "Traceback" not in result.stderr
