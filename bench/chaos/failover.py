"""Two coordinator processes on one PostgreSQL database, and the faults that make them fail over.

A leader and a standby (``--standby``), each reaching PostgreSQL through a TCP proxy of its
own that the harness can *blackhole* (bytes swallowed, connections left open: a partition,
not a reset), executors and clients given both addresses, and the LLM simulator. Faults:

* ``kill_leader``: SIGKILL the leader; it is started again, as a standby, on the same port;
* ``pause_leader``: SIGSTOP it until the standby has taken over, then SIGCONT: its late
  writes are refused (fenced by term) and it steps down to standby;
* ``blackhole_leader``: cut its database connections while the standby's stay up; heal them
  once the standby took over, and it steps down likewise.

Each fault returns the *takeover time*: from the fault until another coordinator leads and
its work services answer health SERVING (it recovered). Run as a benchmark::

    python -m bench.chaos.failover --db postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        --failovers 20 --out results/failover.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.pool import NullPool

from conveyor.client.client import AsyncClient
from conveyor.coordinator.server import SERVICE_NAMES
from conveyor.coordinator.store.schema import leadership, tasks
from conveyor.errors import ConfigurationError

from ..cluster import ManagedProcess
from . import invariants
from .invariants import Fault, InvariantReport
from .postgres import PrivateServer
from .tcp_proxy import TcpProxy
from .workload import Workload

COORDINATORS = ("a", "b")
WORK_SERVICE = SERVICE_NAMES[0]


# --------------------------------------------------------------------------- proxy


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True)
class FailoverSettings:
    database_url: str
    workdir: Path
    executors: int = 2
    concurrency: int = 20
    #: Seconds of the leader's lease (``--leader-lease``): the takeover bound is about 4/3 of it.
    leader_lease: float = 3.0
    lease_ttl: float = 8.0
    heartbeat_interval: float = 0.5
    latency: str = "uniform:0.05,0.2"
    seed: int = 1
    #: The server behind ``database_url`` if it may be restarted (a private one: never the shared).
    postgres_server: PrivateServer | None = None


@dataclass(frozen=True)
class Takeover:
    fault: str
    old_leader: str
    new_leader: str
    seconds: float
    term: int


@dataclass
class FailoverCluster:
    """Use as ``with FailoverCluster(settings) as cluster: ...``; everything stops on exit."""

    settings: FailoverSettings
    coordinators: dict[str, ManagedProcess] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    proxies: dict[str, TcpProxy] = field(default_factory=dict)
    executors: list[ManagedProcess] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    takeovers: list[Takeover] = field(default_factory=list)
    simulator: ManagedProcess | None = None
    simulator_url: str = ""

    def __post_init__(self) -> None:
        self._database = sa.create_engine(self.settings.database_url, poolclass=NullPool)
        self._started = time.monotonic()
        self._spawned: list[ManagedProcess] = []

    def __enter__(self) -> FailoverCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _start(self) -> None:
        settings = self.settings
        self.simulator = self._spawn(
            "simulator",
            [
                "simulator",
                "--listen",
                "127.0.0.1:0",
                "--latency",
                settings.latency,
                "--seed",
                str(settings.seed),
            ],
        )
        self.simulator_url = "http://" + self.simulator.wait_for_address(30)
        for name in COORDINATORS:
            self.proxies[name], _ = TcpProxy.for_url(settings.database_url)
            self.addresses[name] = f"127.0.0.1:{_free_port()}"
        self._start_coordinator("a", standby=False)
        self._start_coordinator("b", standby=True)
        for _ in range(settings.executors):
            self.add_executor()
        self._started = time.monotonic()

    def _coordinator_url(self, name: str) -> str:
        parsed = sa.engine.make_url(self.settings.database_url)
        return parsed.set(host="127.0.0.1", port=self.proxies[name].port).render_as_string(
            hide_password=False
        )

    def _start_coordinator(self, name: str, *, standby: bool) -> None:
        settings = self.settings
        args = [
            "coordinator",
            "--db",
            self._coordinator_url(name),
            "--listen",
            self.addresses[name],
            "--workflows",
            "bench.workflows",
            "--leader-lease",
            str(settings.leader_lease),
            "--lease-ttl",
            str(settings.lease_ttl),
            "--heartbeat-interval",
            str(settings.heartbeat_interval),
        ]
        if standby:
            args.append("--standby")
        process = self._spawn(f"coordinator-{name}", args)
        process.wait_for_address(60)
        self.coordinators[name] = process

    def add_executor(self) -> ManagedProcess:
        executor = self._spawn(
            f"executor-{len(self.executors) + 1}",
            [
                "executor",
                "--coordinator",
                self.target,
                "--concurrency",
                str(self.settings.concurrency),
                "--llm-timeout",
                "10",
                "--drain-timeout",
                "60",
            ],
            {"ANTHROPIC_BASE_URL": self.simulator_url, "ANTHROPIC_API_KEY": "simulator"},
        )
        self.executors.append(executor)
        return executor

    @property
    def target(self) -> str:
        """Every coordinator's address, as executors and clients are given them."""
        return ",".join(self.addresses[name] for name in COORDINATORS)

    def client(self) -> AsyncClient:
        return AsyncClient(self.target, timeout=30)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        workdir = self.settings.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / f"{name}.log"
        restarts = 1
        while log_path.exists():
            restarts += 1
            log_path = workdir / f"{name}-{restarts}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "conveyor.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
            )
        managed = ManagedProcess(name, process, log_path)
        self._spawned.append(managed)
        return managed

    def stop(self) -> None:
        for process in self.coordinators.values():
            process.signal(signal.SIGCONT)  # a paused one must be able to stop
        for executor in self.executors:
            executor.signal(signal.SIGTERM)
        for executor in self.executors:
            executor.stop(timeout=30)
        for process in self._spawned:
            process.stop(timeout=15)
        for proxy in self.proxies.values():
            proxy.close()
        self._database.dispose()

    def log_of(self, name: str) -> str:
        return self.coordinators[name].log_path.read_text(errors="replace")

    def log_tails(self, lines: int = 30) -> str:
        parts = []
        for process in self._spawned:
            if process.log_path.exists():
                tail = process.log_path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {process.name} ({process.log_path}) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # ----------------------------------------------------------------- reading

    async def leader(self) -> tuple[int, str | None]:
        """The current term and the name of the coordinator leading it (None: no row yet)."""

        def read() -> tuple[int, str | None]:
            with self._database.connect() as connection:
                row = connection.execute(sa.select(leadership.c.term, leadership.c.address)).first()
            if row is None:
                return 0, None
            names = [name for name, address in self.addresses.items() if address == row.address]
            return int(row.term), names[0] if names else None

        return await asyncio.to_thread(read)

    async def serving(self, name: str) -> bool:
        """Whether ``name``'s work services answer health SERVING."""
        try:
            async with grpc.aio.insecure_channel(self.addresses[name]) as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=WORK_SERVICE), timeout=1
                )
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def in_flight(self) -> int:
        def read() -> int:
            with self._database.connect() as connection:
                query = sa.select(sa.func.count()).select_from(tasks).where(tasks.c.claimed_by.is_not(None))
                return int(connection.execute(query).scalar_one())

        return await asyncio.to_thread(read)

    def simulator_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.simulator_url + "/_sim/stats", timeout=10) as response:
            stats: dict[str, Any] = json.load(response)
            return stats

    def check(self) -> InvariantReport:
        return invariants.check(
            self.settings.database_url,
            registered_workflows=["research"],
            simulator_stats=self.simulator_stats(),
            faults=self.faults,
        )

    # ------------------------------------------------------------------ faults

    async def current_leader(self, *, timeout: float = 60) -> tuple[int, str]:
        """The leading coordinator, once one leads and serves."""
        deadline = time.monotonic() + timeout
        while True:
            term, name = await self.leader()
            if name is not None and await self.serving(name):
                return term, name
            if time.monotonic() > deadline:
                raise ConfigurationError(f"no coordinator leads and serves after {timeout:.0f}s")
            await asyncio.sleep(0.05)

    async def _await_takeover(self, fault: str, old: str, term: int, began: float) -> Takeover:
        deadline = began + 60
        while True:
            new_term, name = await self.leader()
            if new_term > term and name is not None and name != old and await self.serving(name):
                takeover = Takeover(fault, old, name, time.monotonic() - began, new_term)
                self.takeovers.append(takeover)
                return takeover
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{fault}: no takeover from {old} (term {term}) within 60s")
            await asyncio.sleep(0.02)

    def _record(self, kind: str, target: str, in_flight: int) -> None:
        self.faults.append(Fault(round(time.monotonic() - self._started, 2), kind, target, in_flight))

    async def kill_leader(self) -> Takeover:
        """SIGKILL the leader; once the other took over, start it again as a standby."""
        term, old = await self.current_leader()
        in_flight = await self.in_flight()
        began = time.monotonic()
        self.coordinators[old].signal(signal.SIGKILL)
        self._record("leader SIGKILL", f"coordinator {old}", in_flight)
        await asyncio.to_thread(self.coordinators[old].process.wait)
        takeover = await self._await_takeover("SIGKILL", old, term, began)
        for attempt in range(3):  # a loaded machine may be slow to free the killed one's port
            try:
                await asyncio.to_thread(self._start_coordinator, old, standby=True)
                break
            except ConfigurationError:
                if attempt == 2:
                    raise
                await asyncio.sleep(1)
        return takeover

    async def pause_leader(self) -> Takeover:
        """SIGSTOP the leader until the other took over, then SIGCONT it; it must step down."""
        term, old = await self.current_leader()
        in_flight = await self.in_flight()
        began = time.monotonic()
        self.coordinators[old].signal(signal.SIGSTOP)
        self._record("leader SIGSTOP past the takeover bound", f"coordinator {old}", in_flight)
        takeover = await self._await_takeover("SIGSTOP", old, term, began)
        self.coordinators[old].signal(signal.SIGCONT)
        await self._await_stood_down(old)
        return takeover

    async def blackhole_leader(self) -> Takeover:
        """Swallow the leader's database traffic until the other took over, then heal it."""
        term, old = await self.current_leader()
        in_flight = await self.in_flight()
        began = time.monotonic()
        self.proxies[old].blackhole()
        self._record("leader's database connections blackholed", f"coordinator {old}", in_flight)
        takeover = await self._await_takeover("blackhole", old, term, began)
        self.proxies[old].heal()
        await self._await_stood_down(old)
        return takeover

    async def restart_database(self, down_for: float = 0.0) -> tuple[int, int]:
        """Restart PostgreSQL under both coordinators (every connection breaks), keeping it down
        ``down_for`` seconds (past the leader's lease, the leader must step down); return the
        leader's term before and, once a coordinator leads and serves again, after."""
        server = self.settings.postgres_server
        if server is None:
            raise ConfigurationError(
                "restart_database needs FailoverSettings.postgres_server (a private server: "
                "restarting the shared one breaks every other run on the machine)"
            )
        term, _ = await self.current_leader()
        in_flight = await self.in_flight()
        if down_for > 0:
            self._record(f"PostgreSQL down {down_for:.0f}s", "database", in_flight)
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(down_for)
            await asyncio.to_thread(server.start)
        else:
            self._record("PostgreSQL restart", "database", in_flight)
            await asyncio.to_thread(server.restart)
        new_term, _ = await self.current_leader()
        return term, new_term

    async def sample_leaders(self, stop: asyncio.Event, overlaps: list[str]) -> int:
        """Until ``stop``: probe both coordinators' health, appending to ``overlaps`` each time
        two served work at once; returns how many samples were taken. A witness is one
        coordinator SERVING before and after the other was seen SERVING (probes are sequential,
        so one probe each could straddle a clean handover)."""
        names = list(self.addresses)
        samples = 0
        while not stop.is_set():
            for first, second in ((names[0], names[1]), (names[1], names[0])):
                if await self.serving(first) and await self.serving(second) and await self.serving(first):
                    try:
                        term, leader = await self.leader()
                        row = f"term {term}, {leader}"
                    except sa.exc.OperationalError:
                        row = "unreadable: the database is down"
                    overlaps.append(f"{first} and {second} both served (leadership row: {row})")
            samples += 1
            await asyncio.sleep(0.05)
        return samples

    async def _await_stood_down(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while await self.serving(name) or "stepping down" not in self.log_of(name):
            if time.monotonic() > deadline:
                raise ConfigurationError(f"coordinator {name} did not step down within {timeout:.0f}s")
            await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- benchmark


@contextlib.contextmanager
def _schema(base_url: str) -> Iterator[str]:
    """A schema of its own on the shared server (dropped afterwards): the server is never restarted."""
    schema = f"failover_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


async def _finished(workload: Workload, client: AsyncClient) -> tuple[float, int]:
    counts = await workload.counts(client)
    return time.monotonic(), sum(n for status, n in counts.items() if status.finished)


async def _benchmark(
    settings: FailoverSettings, failovers: int, workflows: int, gap: float
) -> dict[str, Any]:
    """``failovers`` faults in turn (SIGKILL, SIGSTOP, blackhole), ``gap`` seconds of steady work
    before each. Throughput lost per failover: the workflows the steady rate of the gap before
    would have finished from the fault until ``gap`` seconds after the takeover, minus those
    that did."""
    workload = Workload(workflows, "failover")
    kinds = ("SIGKILL", "SIGSTOP", "blackhole")
    losses: list[float] = []
    rates: list[float] = []
    with FailoverCluster(settings) as cluster:
        async with cluster.client() as client:
            await workload.start(client)
            began = time.monotonic()
            while len(cluster.takeovers) < failovers:
                gap_start = await _finished(workload, client)
                await asyncio.sleep(gap)
                fault_at = await _finished(workload, client)
                if fault_at[1] >= workflows:
                    print("the workload finished before every failover: give more --workflows", flush=True)
                    break
                rate = (fault_at[1] - gap_start[1]) / (fault_at[0] - gap_start[0])
                kind = kinds[len(cluster.takeovers) % len(kinds)]
                fault = {
                    "SIGKILL": cluster.kill_leader,
                    "SIGSTOP": cluster.pause_leader,
                    "blackhole": cluster.blackhole_leader,
                }[kind]
                takeover = await fault()
                await asyncio.sleep(gap)
                after = await _finished(workload, client)
                lost = max(0.0, rate * (after[0] - fault_at[0]) - (after[1] - fault_at[1]))
                rates.append(rate)
                losses.append(lost)
                print(
                    f"failover {len(cluster.takeovers)}: {takeover.fault} of {takeover.old_leader}, "
                    f"{takeover.new_leader} serving after {takeover.seconds:.2f}s (term {takeover.term}); "
                    f"steady {rate:.1f} workflows/s, {lost:.0f} workflows' worth lost",
                    flush=True,
                )
            faulted_seconds = time.monotonic() - began
            counts = await workload.wait_until_finished(client, timeout=900)
            total_seconds = time.monotonic() - began
        report = cluster.check()
        seconds = sorted(t.seconds for t in cluster.takeovers)
        return {
            "settings": {k: str(v) for k, v in asdict(settings).items()},
            "failovers": len(seconds),
            "takeover_p50_s": round(statistics.median(seconds), 3),
            "takeover_max_s": round(max(seconds), 3),
            "takeover_p50_by_fault_s": {
                kind: round(statistics.median([t.seconds for t in cluster.takeovers if t.fault == kind]), 3)
                for kind in kinds
                if any(t.fault == kind for t in cluster.takeovers)
            },
            "steady_workflows_per_s_p50": round(statistics.median(rates), 2),
            "workflows_lost_per_failover_p50": round(statistics.median(losses), 1),
            "workflows_lost_per_failover_max": round(max(losses), 1),
            "takeovers": [asdict(t) for t in cluster.takeovers],
            "workflows": workflows,
            "seconds_with_faults": round(faulted_seconds, 1),
            "seconds_total": round(total_seconds, 1),
            "by_status": {str(status): n for status, n in counts.items()},
            "invariants_ok": report.ok,
            "problems": report.problems(),
            "duplicate_llm_calls": report.duplicate_llm_calls,
            "duplicate_bound": report.duplicate_bound,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", required=True, help="PostgreSQL URL; a schema of its own is created in it")
    parser.add_argument("--failovers", type=int, default=20)
    parser.add_argument("--workflows", type=int, default=12000)
    parser.add_argument("--gap", type=float, default=3.0, help="seconds of steady work between failovers")
    parser.add_argument("--leader-lease", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="where the processes' logs go")
    args = parser.parse_args(argv)
    with _schema(args.db) as url, tempfile.TemporaryDirectory(prefix="conveyor-failover-") as scratch:
        workdir = args.workdir or Path(scratch)
        settings = FailoverSettings(database_url=url, workdir=workdir, leader_lease=args.leader_lease)
        result = asyncio.run(_benchmark(settings, args.failovers, args.workflows, args.gap))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if result["invariants_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
