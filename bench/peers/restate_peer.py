"""The benchmark workloads on Restate, inside a network namespace of their own.

``python -m bench.peers.restate_peer --server PATH --workdir DIR --workload research|agent
--workflows N --concurrency C --output FILE`` starts, in this process's network
namespace, the simulator, ``restate-server`` (its data in DIR) and the workflow service
(:mod:`bench.peers.restate_service` on hypercorn, HTTP/2), registers the service, starts
N workflows through the ingress, waits for each one's output, and writes the timings
plus the CPU-seconds and peak RSS of the server and the service (sampled here, as the
harness samples the other engines; the simulator and this driver are not counted).

Why a namespace: ``restate-server`` contacts the internet at start (an update check
through GitHub's API), which this machine does not allow. :mod:`bench.scenarios.peer`
runs this module under ``unshare -rn`` with loopback up, so every process of the run
talks over a private loopback and nothing leaves it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from ..cluster import LISTENING
from ..harness.sampler import ProcessSampler
from .common import add_workload_arguments, timings_document, workflow_input

INGRESS = "http://127.0.0.1:8080"
ADMIN = "http://127.0.0.1:9070"
SERVICE_ADDRESS = "127.0.0.1:9080"
STARTS_IN_FLIGHT = 32
WAITS_IN_FLIGHT = 200


def _spawn(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd
        )


@contextlib.contextmanager
def _processes(args: argparse.Namespace) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        started["simulator"] = _spawn(
            [
                sys.executable,
                "-m",
                "conveyor.cli",
                "simulator",
                "--listen",
                "127.0.0.1:0",
                "--latency",
                "fixed:0",
            ],
            workdir / "simulator.log",
        )
        simulator_url = "http://" + _wait_for_line(workdir / "simulator.log", started["simulator"])
        started["restate-server"] = _spawn(
            [args.server, "--no-logo"],
            workdir / "restate-server.log",
            env={"RESTATE_DISABLE_TELEMETRY": "true", "RESTATE_LOG_FORMAT": "compact", "NO_COLOR": "1"},
            cwd=workdir,
        )
        started["service"] = _spawn(
            [sys.executable, "-m", "hypercorn", "--bind", SERVICE_ADDRESS, "bench.peers.restate_service:app"],
            workdir / "service.log",
            env={
                "ANTHROPIC_BASE_URL": simulator_url,
                "ANTHROPIC_API_KEY": "simulator",
                "BENCH_LLM_CONCURRENCY": str(args.concurrency),
            },
        )
        yield started
    finally:
        for process in reversed(started.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_line(log: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return match.group("address")
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with {process.returncode}; see {log}")
        time.sleep(0.05)
    raise RuntimeError(f"{log.stem} did not start within {timeout:.0f}s; see {log}")


async def _until_ok(
    session: aiohttp.ClientSession, method: str, url: str, timeout: float, **kwargs: Any
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session.request(method, url, **kwargs) as response:
                if response.status < 300:
                    return await response.json(content_type=None)
                detail = await response.text()
        except aiohttp.ClientError as error:
            detail = str(error)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{method} {url} did not succeed within {timeout:.0f}s: {detail}")
        await asyncio.sleep(0.5)


async def _drive(args: argparse.Namespace) -> dict[str, Any]:
    name = "research" if args.workload == "research" else "agent_loop"
    run_id = f"{int(time.time())}"
    connector = aiohttp.TCPConnector(limit=WAITS_IN_FLIGHT + STARTS_IN_FLIGHT)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        await _until_ok(session, "GET", f"{ADMIN}/health", 120)
        await _until_ok(
            session, "POST", f"{ADMIN}/deployments", 120, json={"uri": f"http://{SERVICE_ADDRESS}"}
        )
        began = time.time()
        created = [0.0] * args.workflows
        next_index = 0

        async def starter() -> None:
            nonlocal next_index
            while next_index < args.workflows:
                index, next_index = next_index, next_index + 1
                created[index] = time.time()
                url = f"{INGRESS}/{name}/{run_id}-{index}/run/send"
                async with session.post(url, json=workflow_input(args, index)) as response:
                    if response.status >= 300:
                        raise RuntimeError(f"starting {url}: {response.status} {await response.text()}")
                if (index + 1) % 1000 == 0:
                    print(f"restate peer: {index + 1:,} workflows started", file=sys.stderr, flush=True)

        await asyncio.gather(*(starter() for _ in range(STARTS_IN_FLIGHT)))
        enqueued = time.time()
        gate = asyncio.Semaphore(WAITS_IN_FLIGHT)
        done = 0
        loop_deadline = asyncio.get_running_loop().time() + args.time_limit - (time.time() - began)

        async def output(index: int) -> float | None:
            nonlocal done
            async with gate:
                url = f"{INGRESS}/restate/workflow/{name}/{run_id}-{index}/attach"
                try:
                    async with asyncio.timeout_at(loop_deadline), session.get(url) as response:
                        if response.status >= 300:
                            print(f"restate peer: {url}: {response.status}", file=sys.stderr, flush=True)
                            return None
                        result = await response.json(content_type=None)
                except TimeoutError:
                    return None
            done += 1
            if done % 500 == 0:
                print(f"restate peer: {done:,} workflows finished", file=sys.stderr, flush=True)
            finished: float = result["finished_at"]
            return finished

        finished = await asyncio.gather(*(output(i) for i in range(args.workflows)))
    return timings_document(began, enqueued, created, list(finished))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.restate_peer", description=__doc__)
    parser.add_argument("--server", required=True, help="the restate-server binary")
    parser.add_argument("--workdir", type=Path, required=True, help="logs and the server's data")
    add_workload_arguments(parser)
    parser.add_argument("--output", type=Path, required=True, help="where to write the timings (JSON)")
    args = parser.parse_args(argv)
    with _processes(args) as processes:
        engine = ["restate-server", "service"]
        with ProcessSampler({name: p.pid for name, p in processes.items()}) as sampler:
            outcome = asyncio.run(_drive(args))
        series = [sampler.series[name] for name in engine]
        start, end = series[0].times[0], series[0].times[-1]
        outcome["cpu_seconds"] = sampler.cpu_between(engine, start, end)
        outcome["peak_rss_bytes"] = sum(s.peak_rss() for s in series)
        outcome["other_load_cores"] = (
            sampler.other_cpu_between(start, end) / (end - start) if end > start else 0.0
        )
    args.output.write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
