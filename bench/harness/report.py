"""A run's results directory: ``results/<timestamp>-<scenario>/`` with JSON, Markdown and PNGs.

``results.json`` holds everything measured plus the machine and the exact command,
so a number can always be traced to how it was produced; ``summary.md`` is the short
human version (the tables that go into ``docs/benchmarks.md``); plots sit beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from . import machine
from .timings import as_json

DEFAULT_ROOT = Path("results")


class ResultsDirectory:
    def __init__(self, scenario: str, root: Path = DEFAULT_ROOT) -> None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.path = root / f"{stamp}-{scenario}"
        self.path.mkdir(parents=True, exist_ok=True)
        self.scenario = scenario

    def workdir(self, name: str) -> Path:
        """A directory for one run's process logs and SQLite file."""
        path = self.path / "runs" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def plot(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def write(
        self, machine_info: dict[str, Any], config: dict[str, Any], results: Any, summary_md: str
    ) -> None:
        machine_info = {**machine_info, "load_average_at_end": machine.load_average()}
        document = {
            "scenario": self.scenario,
            "command": command_line(),
            "machine": machine_info,
            "config": config,
            "results": results,
        }
        (self.path / "results.json").write_text(json.dumps(as_json(document), indent=2) + "\n")
        start_load = machine_info["load_average_at_start"]
        end_load = machine_info["load_average_at_end"]
        header = (
            f"# {self.scenario}\n\n"
            f"`{command_line()}`\n\n"
            f"Machine: {machine.one_line(machine_info)}; load average {start_load} at the start, "
            f"{end_load} at the end; commit {machine_info['git_commit']}.\n\n"
        )
        (self.path / "summary.md").write_text(header + summary_md.rstrip() + "\n")


def options(args: argparse.Namespace) -> dict[str, Any]:
    """A scenario's options as JSON-ready data."""
    plain = (int, float, str, bool, list, type(None))
    return {key: value if isinstance(value, plain) else str(value) for key, value in vars(args).items()}


def command_line() -> str:
    """How this process was started, as ``python -m bench ...`` when run as a module."""
    program = Path(sys.argv[0])
    if program.name == "__main__.py":
        package = program.resolve().parent
        with contextlib.suppress(ValueError):  # run from elsewhere: name the package only
            package = package.relative_to(Path.cwd())
        launcher = ["-m", package.name if package.is_absolute() else ".".join(package.parts)]
    else:
        launcher = [str(program)]
    return "python " + " ".join(shlex.quote(arg) for arg in [*launcher, *sys.argv[1:]])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats get sensible precision, NaN shows as a dash."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
