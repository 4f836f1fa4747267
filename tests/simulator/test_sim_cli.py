"""The command line: ``python -m conveyor.testing.simulator`` as a real subprocess."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import sys
from pathlib import Path

import anthropic
import pytest

from conveyor.testing.simulator import cli

STARTUP_TIMEOUT = 60.0  # generous: interpreter start-up on a loaded machine


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conveyor.testing.simulator",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_serves_until_sigterm_then_exits_cleanly(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("file-secret\n")
    process = await start(
        "--listen", "127.0.0.1:0", "--rpm", "100", "--seed", "7", "--api-key-file", str(key_file)
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT)).decode()
        match = re.fullmatch(r"simulator listening on (http://127\.0\.0\.1:\d+) \((.*)\)\n", line)
        assert match is not None, line
        assert "latency fixed:0, rpm 100, itpm unlimited" in match.group(2)
        assert "file-secret" not in line
        async with anthropic.AsyncAnthropic(
            base_url=match.group(1), api_key="file-secret", max_retries=0
        ) as client:
            message = await client.messages.create(
                model="m", max_tokens=10, messages=[{"role": "user", "content": "over the wire"}]
            )
        assert message.content[0].type == "text"
        assert message.content[0].text == "over the wire"
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), STARTUP_TIMEOUT)
    assert returncode == 0


async def test_sigint_also_exits_cleanly() -> None:
    process = await start("--listen", "127.0.0.1:0")
    assert process.stdout is not None
    assert b"listening on" in await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT)
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), STARTUP_TIMEOUT) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latency", "soon"], "latency spec 'soon'"),
        (["--hang", "1.5"], "hang must be a probability"),
        (["--listen", "8787"], "--listen must be HOST:PORT"),
        (["--api-key-file", "/nonexistent/key"], "cannot read --api-key-file"),
    ],
)
async def test_invalid_settings_exit_2_with_a_reason(args: list[str], message: str) -> None:
    process = await start(*args)
    _, stderr = await asyncio.wait_for(process.communicate(), STARTUP_TIMEOUT)
    assert process.returncode == 2
    assert message in stderr.decode()


def test_empty_api_key_file_is_rejected(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  \n")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--api-key-file", str(key_file)])) == 2


def test_listen_failure_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        assert cli.run(parser.parse_args(["--listen", f"127.0.0.1:{taken.getsockname()[1]}"])) == 1


def test_every_option_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["--help"])
    assert excinfo.value.code == 0
    help_text = capsys.readouterr().out
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"
            assert action.option_strings[0] in help_text
