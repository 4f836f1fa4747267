"""A whole Conveyor deployment on this machine, as separate processes.

:class:`LocalCluster` starts the simulator, the coordinator and N executors with the
real ``conveyor`` command, waits until each is ready, and on exit stops them in the
order that loses nothing (executors drain first) and kills whatever does not stop.
The demo, the multi-process tests and the benchmarks all run on it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from conveyor.errors import ConfigurationError

LISTENING = re.compile(r"listening on (?:http://)?(?P<address>[\w.\-]+:\d+)")


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    terminated: bool = False

    def wait_for_address(self, timeout: float) -> str:
        """The address the process printed in its "listening on HOST:PORT" line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                return match.group("address")
            if self.process.poll() is not None:
                raise ConfigurationError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log_path}"
                )
            time.sleep(0.05)
        raise ConfigurationError(f"{self.name} did not start within {timeout:.0f}s; see {self.log_path}")

    def signal(self, signum: int) -> None:
        # A second SIGTERM could land after the process removed its handlers on the
        # way out, and kill a clean exit: remember that one was sent.
        self.terminated = self.terminated or signum == signal.SIGTERM
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def stop(self, timeout: float) -> int:
        """SIGTERM (unless already sent), then SIGKILL after ``timeout``; returns the exit code."""
        if not self.terminated:
            self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.process.wait()


@dataclass
class ClusterSpec:
    database_url: str
    workdir: Path
    workflow_modules: Sequence[str] = ("bench.workflows",)
    executors: int = 2
    concurrency: int = 50
    #: ``conveyor simulator`` flags; ``None`` means call the real API (needs ANTHROPIC_API_KEY).
    simulator_args: Sequence[str] | None = ("--latency", "uniform:0.05,0.2")
    coordinator_args: Sequence[str] = ()
    executor_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    #: The module the coordinator runs as (``python -m MODULE coordinator ...``); a wrapper such as
    #: ``bench.harness.statement_probe`` observes the coordinator without changing it.
    coordinator_module: str = "conveyor.cli"


class LocalCluster:
    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.simulator: ManagedProcess | None = None
        self.coordinator: ManagedProcess | None = None
        self.executors: list[ManagedProcess] = []
        self.simulator_url: str | None = None
        self.coordinator_address = ""

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self.stop()

    def _spawn(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        module: str = "conveyor.cli",
    ) -> ManagedProcess:
        self.spec.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.spec.workdir / f"{name}.log"
        restarts = 1
        while log_path.exists():  # a restarted process keeps its predecessor's log
            restarts += 1
            log_path = self.spec.workdir / f"{name}-{restarts}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env, **(env or {})},
                start_new_session=True,  # its own process group: a kill reaches its children too
            )
        return ManagedProcess(name, process, log_path)

    def start(self) -> None:
        spec = self.spec
        llm_env: dict[str, str] = {}
        if spec.simulator_args is not None:
            self.simulator = self._spawn(
                "simulator", ["simulator", "--listen", "127.0.0.1:0", *spec.simulator_args]
            )
            self.simulator_url = "http://" + self.simulator.wait_for_address(30)
            llm_env = {"ANTHROPIC_BASE_URL": self.simulator_url, "ANTHROPIC_API_KEY": "simulator"}
        elif not os.environ.get("ANTHROPIC_API_KEY"):
            raise ConfigurationError("calling the real API needs ANTHROPIC_API_KEY in the environment")
        self.start_coordinator()
        for _ in range(spec.executors):
            self.add_executor(llm_env)

    def start_coordinator(self, port: int = 0) -> None:
        args = ["coordinator", "--db", self.spec.database_url, "--listen", f"127.0.0.1:{port}"]
        for module in self.spec.workflow_modules:
            args += ["--workflows", module]
        self.coordinator = self._spawn(
            "coordinator", [*args, *self.spec.coordinator_args], module=self.spec.coordinator_module
        )
        self.coordinator_address = self.coordinator.wait_for_address(60)

    def add_executor(
        self, llm_env: dict[str, str] | None = None, *, extra_args: Sequence[str] = ()
    ) -> ManagedProcess:
        """Start one more executor; ``extra_args`` are added to ``spec.executor_args`` for it alone."""
        if llm_env is None and self.simulator_url is not None:
            llm_env = {"ANTHROPIC_BASE_URL": self.simulator_url, "ANTHROPIC_API_KEY": "simulator"}
        executor = self._spawn(
            f"executor-{len(self.executors) + 1}",
            [
                "executor",
                "--coordinator",
                self.coordinator_address,
                "--concurrency",
                str(self.spec.concurrency),
                *self.spec.executor_args,
                *extra_args,
            ],
            llm_env,
        )
        self.executors.append(executor)
        return executor

    def log_tails(self, lines: int = 20) -> str:
        """The end of every process's log, for failure messages."""
        parts = []
        for process in (self.simulator, self.coordinator, *self.executors):
            if process is not None and process.log_path.exists():
                tail = process.log_path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {process.name} ({process.log_path}) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> dict[str, int]:
        """Stop everything; returns each process's exit code."""
        codes: dict[str, int] = {}
        for executor in self.executors:  # all drain at once, not one after another
            executor.signal(signal.SIGTERM)
        for executor in self.executors:
            codes[executor.name] = executor.stop(timeout=30)
        for process in (self.coordinator, self.simulator):
            if process is not None:
                codes[process.name] = process.stop(timeout=15)
        return codes
