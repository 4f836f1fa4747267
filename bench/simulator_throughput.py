"""Throughput of the simulator under the real SDK: ``python -m bench.simulator_throughput``.

Starts the simulator in its own process (so its CPU use can be measured
separately from the load generator's), then for each concurrency level runs
that many SDK callers (aiohttp transport, zero latency) in one or more driver
processes and reports requests/s and the simulator's CPU use. CPU time per
request is the number to watch: it says how much of a core the simulator
would take at any given request rate, independent of how fast the drivers are.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.pool import Pool
from typing import ClassVar

import anthropic
import httpx2
import psutil
from anthropic.types import MessageParam

__all__ = ["main"]

_LISTENING = re.compile(r"listening on (\S+)")
_PROMPT: list[MessageParam] = [
    {"role": "user", "content": "Summarise the plot of a short story in one sentence."}
]


@dataclass(frozen=True)
class _Window:
    """A measurement window in wall-clock time, shared by all processes."""

    start: float
    end: float

    @classmethod
    def after(cls, warmup: float, duration: float) -> _Window:
        start = time.time() + warmup
        return cls(start, start + duration)


@dataclass(frozen=True)
class _Result:
    concurrency: int
    requests_per_second: float
    errors: int
    simulator_cpu_percent: float
    driver_cpu_percent: float

    HEADER: ClassVar[str] = (
        f"{'concurrency':>11} {'req/s':>8} {'errors':>6} {'sim CPU%':>8} {'sim us/req':>10} "
        f"{'driver CPU%':>11}"
    )

    def row(self) -> str:
        us_per_request = (
            self.simulator_cpu_percent / 100 / self.requests_per_second * 1e6
            if self.requests_per_second
            else float("nan")
        )
        return (
            f"{self.concurrency:>11} {self.requests_per_second:>8.0f} {self.errors:>6} "
            f"{self.simulator_cpu_percent:>8.1f} {us_per_request:>10.1f} {self.driver_cpu_percent:>11.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    with (
        _simulator_process() as (simulator, base_url),
        multiprocessing.get_context("spawn").Pool(args.drivers) as pool,
    ):
        # Boot the drivers (and their SDK imports) before any window opens.
        pool.map(_ready, range(args.drivers))
        drivers = [psutil.Process(child.pid) for child in multiprocessing.active_children()]
        print(f"simulator pid {simulator.pid} at {base_url}; {args.drivers} driver process(es)")
        print(_Result.HEADER, flush=True)
        for concurrency in args.concurrency:
            window = _Window.after(args.warmup, args.duration)
            print(_measure(pool, base_url, simulator, drivers, concurrency, window).row(), flush=True)
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator_throughput", description=__doc__)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[50, 200, 1000],
        help="in-flight requests per run (default: %(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=4.0, help="measured seconds per run (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds first (default: %(default)s)"
    )
    parser.add_argument(
        "--drivers",
        type=int,
        default=1,
        help="load-generating processes sharing the concurrency; the SDK costs far more CPU per call "
        "than the simulator, so one driver may be the bottleneck (default: %(default)s)",
    )
    return parser.parse_args(argv)


@contextmanager
def _simulator_process() -> Iterator[tuple[psutil.Process, str]]:
    """Run ``python -m conveyor.testing.simulator`` on a free port; yield its process and base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor.testing.simulator", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # only start-up errors and a shutdown line; shown if start-up fails
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        match = _LISTENING.search(line)
        if match is None:
            process.kill()
            raise RuntimeError(f"simulator did not start: {line!r}\n{process.stderr.read()}")
        yield psutil.Process(process.pid), match.group(1)
    finally:
        process.terminate()
        process.communicate(timeout=10)


def _measure(
    pool: Pool,
    base_url: str,
    simulator: psutil.Process,
    drivers: list[psutil.Process],
    concurrency: int,
    window: _Window,
) -> _Result:
    shares = [concurrency // len(drivers) + (i < concurrency % len(drivers)) for i in range(len(drivers))]
    pending = pool.starmap_async(_drive, [(base_url, share, window) for share in shares if share])
    time.sleep(max(0.0, window.start - time.time()))
    sim_cpu_start = _cpu_seconds(simulator)
    driver_cpu_start = sum(_cpu_seconds(process) for process in drivers)
    time.sleep(max(0.0, window.end - time.time()))
    sim_cpu = _cpu_seconds(simulator) - sim_cpu_start
    driver_cpu = sum(_cpu_seconds(process) for process in drivers) - driver_cpu_start
    outcomes = pending.get()
    duration = window.end - window.start
    return _Result(
        concurrency=concurrency,
        requests_per_second=sum(done for done, _ in outcomes) / duration,
        errors=sum(errors for _, errors in outcomes),
        simulator_cpu_percent=100 * sim_cpu / duration,
        driver_cpu_percent=100 * driver_cpu / duration,
    )


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _ready(_: int) -> None:
    """Pool warm-up task: importing this module in the worker is the point."""


def _drive(base_url: str, concurrency: int, window: _Window) -> tuple[int, int]:
    """Driver process body: returns (successes, errors) completed inside the window."""
    return asyncio.run(_drive_async(base_url, concurrency, window))


async def _drive_async(base_url: str, concurrency: int, window: _Window) -> tuple[int, int]:
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = anthropic.AsyncAnthropic(
        base_url=base_url,
        api_key="bench",
        max_retries=0,
        http_client=anthropic.DefaultAioHttpClient(limits=limits),
    )
    counts = [0, 0]  # successes, errors

    async def caller() -> None:
        while time.time() < window.end:
            try:
                await client.messages.create(model="sim", max_tokens=64, messages=_PROMPT)
                ok = True
            except anthropic.APIError:
                ok = False
            if window.start <= time.time() < window.end:
                counts[0 if ok else 1] += 1

    async with client:
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return counts[0], counts[1]


if __name__ == "__main__":
    sys.exit(main())
