"""Options from the environment and a config file, as real ``conveyor`` processes read them.

Each test starts the real command in a process of its own, configured mostly through
``CONVEYOR_*`` variables and a TOML file, and observes the effect from outside: what the
coordinator tells an executor in its Welcome, what Diagnose reports of an executor, whether a
client configured by ``from_env`` gets in. (The resolution rules themselves: tests/unit/test_settings.py.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bench.chaos.poison import ALWAYS_FAILS, CRASHES_EXECUTOR
from bench.cluster import ManagedProcess
from cli_runs import run_once
from conveyor.client.client import AsyncClient
from conveyor.client.sync import Client
from conveyor.errors import Unauthenticated
from security.tokens import Tokens
from support import ManualExecutor, eventually, registry_of
from toolkit import MakeStack

REPOSITORY = Path(__file__).resolve().parents[2]
#: Variables of the test run itself that would configure the processes under test.
UNSET = ("CONVEYOR_CONFIG", "CONVEYOR_TOKEN", "CONVEYOR_TOKEN_FILE", "CONVEYOR_COORDINATOR")


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for process in started:
        process.stop(timeout=20)


def spawn(
    processes: list[ManagedProcess], workdir: Path, name: str, args: Sequence[str], env: dict[str, str]
) -> ManagedProcess:
    """``conveyor ARGS`` with ``env`` added to a copy of this environment without :data:`UNSET`."""
    base = {key: value for key, value in os.environ.items() if key not in UNSET}
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**base, "PYTHONUNBUFFERED": "1", **env},
            cwd=REPOSITORY,
            start_new_session=True,
        )
    managed = ManagedProcess(name, process, log_path)
    processes.append(managed)
    return managed


async def test_the_coordinator_takes_its_options_from_flag_over_environment_over_file(
    database_url: str, tmp_path: Path, processes: list[ManagedProcess]
) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(
        'workflows = ["bench.workflows"]\n'
        "heartbeat_interval = 2\n"  # only here: the file's value
        "lease_ttl = 20\n"  # also in the environment, which wins
        "max_payload_bytes = 7000\n"  # also a variable and a flag: the flag wins
    )
    coordinator = spawn(
        processes,
        tmp_path,
        "coordinator",
        ["coordinator", "--max-payload-bytes", "5000"],
        {
            "CONVEYOR_CONFIG": str(config),
            "CONVEYOR_DB": database_url,
            "CONVEYOR_LISTEN": "127.0.0.1:0",
            "CONVEYOR_LEASE_TTL": "30",
            "CONVEYOR_MAX_PAYLOAD_BYTES": "9000",
        },
    )
    address = await asyncio.to_thread(coordinator.wait_for_address, 60)
    async with ManualExecutor(address, "probe", heartbeat_interval=1.0) as probe:
        welcome = await probe.connect()
    assert welcome.heartbeat_interval.seconds == 2
    assert welcome.lease_ttl.seconds == 30
    assert welcome.max_payload_bytes == 5000
    assert await asyncio.to_thread(coordinator.stop, 30) == 0


async def test_the_executor_takes_its_options_from_the_environment_over_the_file(
    make_stack: MakeStack, tmp_path: Path, processes: list[ManagedProcess]
) -> None:
    stack = await make_stack(registry_of())
    assert stack.server is not None and stack.client is not None
    config = tmp_path / "executor.toml"
    config.write_text('concurrency = 3\nexecutor_id = "from-the-file"\nno_llm = true\n')
    executor = spawn(
        processes,
        tmp_path,
        "executor",
        ["executor"],
        {
            "CONVEYOR_CONFIG": str(config),
            "CONVEYOR_COORDINATOR": stack.server.address,
            "CONVEYOR_EXECUTOR_ID": "from-the-environment",
            "CONVEYOR_HANDLERS": "bench.chaos.poison",
        },
    )
    client = stack.client

    async def connected() -> object:
        report = await client.diagnose()
        return [info for info in report.executors if info.state == "live"]

    [info] = await eventually(connected, timeout=60)
    assert info.executor_id == "from-the-environment"
    assert info.capacity == 3
    assert sorted(info.task_kinds) == sorted([ALWAYS_FAILS, CRASHES_EXECUTOR])  # no "llm": no_llm
    # In a thread: the executor's drain talks to this loop's coordinator.
    assert await asyncio.to_thread(executor.stop, 30) == 0


def test_from_env_and_the_client_commands_reach_a_coordinator_that_wants_a_token(
    database_url: str, tmp_path: Path, processes: list[ManagedProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = Tokens.write(tmp_path / "tokens")
    coordinator = spawn(
        processes,
        tmp_path,
        "coordinator",
        ["coordinator", "--listen", "127.0.0.1:0"],
        {
            "CONVEYOR_DB": database_url,
            "CONVEYOR_WORKFLOWS": "bench.workflows",
            "CONVEYOR_AUTH_TOKENS_FILE": str(tokens.file),
        },
    )
    address = coordinator.wait_for_address(60)
    token_file = tmp_path / "client-token"
    token_file.write_text(tokens.client + "\n")
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONVEYOR_COORDINATOR", address)

    with Client.from_env() as anonymous, pytest.raises(Unauthenticated):
        anonymous.count_workflows()

    monkeypatch.setenv("CONVEYOR_TOKEN_FILE", str(token_file))
    with Client.from_env(timeout=20) as client:
        assert client.timeout == 20
        assert sum(client.count_workflows().values()) == 0

    async def with_the_async_client() -> int:
        environ = {"CONVEYOR_COORDINATOR": address, "CONVEYOR_TOKEN": tokens.client}
        async with AsyncClient.from_env(environ) as client:
            return sum((await client.count_workflows()).values())

    assert asyncio.run(with_the_async_client()) == 0

    # The client commands read the same variables (this process's environment, inherited).
    started = run_once("start", "research", "--args", '{"topic": "tides"}')
    assert started.code == 0, started.stderr
    counted = run_once("count", "--json")
    assert counted.code == 0, counted.stderr
    assert sum(counted.json().values()) == 1
    monkeypatch.delenv("CONVEYOR_TOKEN_FILE")
    refused = run_once("count")
    assert refused.code == 1 and "requires a bearer token" in refused.stderr, refused.stderr
    assert coordinator.stop(timeout=30) == 0
