"""The ``conveyor`` command as a user runs it: the installed entry point, in subprocesses.

Starting the CLI takes over a second of CPU, so the runs start in parallel once per
module, and the subcommands' ``--help`` pages come from one subprocess
(:func:`cli_runs.run_in_one_interpreter`).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cli_runs import CliRun, run_in_one_interpreter, run_once

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


def help_pages() -> dict[str, CliRun]:
    command_lines = [[*subcommand.split(), "--help"] for subcommand in SUBCOMMANDS]
    return dict(zip(SUBCOMMANDS, run_in_one_interpreter(command_lines), strict=True))


def unreachable(command: list[str]) -> str:
    return " ".join(command) + " @unreachable"


@pytest.fixture(scope="module")
def closed_address() -> Iterator[str]:
    """A local port that is bound but not listening: connections are refused, and no one else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def runs(closed_address: str) -> dict[str, CliRun]:
    """Every invocation the tests check, run in parallel."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        pages = pool.submit(help_pages)
        top_level = pool.submit(run_once, "--help")
        clients = {
            unreachable(command): pool.submit(
                run_once, *command, "--coordinator", closed_address, "--timeout", "3"
            )
            for command in CLIENT_COMMANDS
        }
        return {"--help": top_level.result(), **pages.result(), **{k: f.result() for k, f in clients.items()}}


def test_top_level_help_lists_every_command_and_how_to_get_examples(runs: dict[str, CliRun]) -> None:
    result = runs["--help"]

    assert result.code == 0, result.stderr
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
def test_subcommand_help_exits_0_and_shows_an_example(runs: dict[str, CliRun], subcommand: str) -> None:
    result = runs[subcommand]

    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"usage: conveyor {subcommand} ")
    assert "example:" in result.stdout, f"`conveyor {subcommand} --help` shows no example"
    example = result.stdout.split("example:", 1)[1]
    assert f"conveyor {subcommand} " in example, f"the example does not show `conveyor {subcommand}`"


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=" ".join)
def test_client_command_against_an_address_where_nothing_listens_exits_4_naming_the_address(
    runs: dict[str, CliRun], closed_address: str, command: list[str]
) -> None:
    result = runs[unreachable(command)]

    assert result.code == 4, (result.stdout, result.stderr)
    assert f"cannot reach the coordinator at {closed_address}" in result.stderr
    assert "Traceback" not in result.stderr
