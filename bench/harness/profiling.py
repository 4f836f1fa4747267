"""Flame graphs of the processes under test, recorded with py-spy while a run goes on.

``--profile`` on a scenario records the coordinator and the first executor for the
whole run (py-spy attaches to a running process and samples it from outside, so the
code under test is unchanged) and writes ``<process>.svg`` beside the results; open
them in a browser. Sampling costs a little CPU on a small machine, so profiled runs
are for finding where time goes, not for the published numbers.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from conveyor.errors import ConfigurationError

SAMPLES_PER_SECOND = 100


@contextlib.contextmanager
def flame_graphs(pids: Mapping[str, int], directory: Path) -> Iterator[list[Path]]:
    """Record ``{name: pid}`` until the block ends; yields the SVG paths being written."""
    beside_python = Path(sys.executable).parent / "py-spy"
    py_spy = str(beside_python) if beside_python.exists() else shutil.which("py-spy")
    if py_spy is None:
        raise ConfigurationError("--profile needs py-spy: pip install -e '.[bench]'")
    paths = [directory / f"{name}.svg" for name in pids]
    with contextlib.ExitStack() as logs:
        recorders = []
        for (name, pid), path in zip(pids.items(), paths, strict=True):
            command = [py_spy, "record", "--pid", str(pid), "--output", str(path)]
            command += ["--rate", str(SAMPLES_PER_SECOND), "--nonblocking"]
            log = logs.enter_context((directory / f"{name}.py-spy.log").open("wb"))
            recorders.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
        try:
            yield paths
        finally:
            for recorder in recorders:  # SIGINT makes py-spy write its file and exit
                recorder.send_signal(signal.SIGINT)
            for recorder in recorders:
                try:
                    recorder.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    recorder.kill()
