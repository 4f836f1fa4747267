"""Run the ``conveyor`` command as a user runs it: the installed entry point, in a subprocess.

Starting the CLI imports gRPC, SQLAlchemy and the anthropic SDK (over a second of CPU),
so :func:`run_in_one_interpreter` runs many command lines in one subprocess, the entry
point script once per line, each with its own captured output and exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENTRY_POINT = Path(sys.executable).with_name("conveyor")
COMMAND = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "conveyor.cli"]

#: Runs the entry point once per command line in one interpreter; prints one JSON result per run.
_RUNNER = """
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
    print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}), flush=True)
"""


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


#: The checkout: what ``--workflows bench.workflows`` is found in (bench/ is not installed).
CHECKOUT = Path(__file__).resolve().parents[1]


def environment(columns: int) -> dict[str, str]:
    """Plain output of a known width, whatever terminal runs the tests; the checkout importable."""
    path = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1", "PYTHONPATH": path}


def run_once(
    *args: str, columns: int = 120, timeout: float = 120, stdin: str | None = None, cwd: Path | None = None
) -> CliRun:
    """``conveyor ARGS`` in a process of its own (``stdin``: text to feed it; ``cwd``: where it runs)."""
    result = subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(columns),
        input=stdin,
        cwd=cwd,
    )
    return CliRun(result.returncode, result.stdout, result.stderr)


def run_in_one_interpreter(
    command_lines: list[list[str]], *, columns: int = 120, timeout: float = 120
) -> list[CliRun]:
    """Each of ``command_lines``, one after another in one subprocess; their results in order."""
    entry_point = str(ENTRY_POINT) if ENTRY_POINT.exists() else ""
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, entry_point, json.dumps(command_lines)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(columns),
    )
    assert result.returncode == 0, result.stderr
    runs = [CliRun(**json.loads(line)) for line in result.stdout.splitlines()]
    assert len(runs) == len(command_lines), result.stderr
    return runs
