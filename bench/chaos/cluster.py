"""A whole deployment on this machine, with named executors and the faults to inject into it.

Every fault is logged as a :class:`~bench.chaos.invariants.Fault` with the number
of tasks leased to executors within its reach just before it hit: each is an LLM
call the fault may cause to be made again, which bounds the duplicates the
invariant check accepts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from conveyor.client.client import AsyncClient
from conveyor.coordinator.store.schema import executors, steps, tasks
from conveyor.errors import ConfigurationError, ConveyorError

from ..cluster import ClusterSpec, LocalCluster, ManagedProcess
from . import invariants, postgres
from .invariants import Fault, InvariantReport


class NothingToHit(ConveyorError):
    """An executor fault found no executor holding tasks: the run is over (see ``run_over``)."""


@dataclass(frozen=True)
class ChaosSettings:
    database_url: str
    workdir: Path
    executors: int = 3
    concurrency: int = 25
    lease_ttl: float = 3.0
    heartbeat_interval: float = 0.5
    #: Simulated LLM latency (``conveyor simulator --latency``).
    latency: str = "uniform:0.02,0.08"
    #: Seconds one LLM attempt may take: how long a hung connection can hold a slot.
    llm_timeout: float = 5.0
    shards: int | None = None
    #: Also load the poison workflow and handlers (:mod:`bench.chaos.poison`).
    poison: bool = False
    seed: int = 1
    #: What ``restart_database`` restarts (PostgreSQL only): by default the machine's cluster.
    postgres_server: postgres.Server = field(default_factory=postgres.SharedCluster)


class ChaosCluster:
    """Use as ``with ChaosCluster(settings) as chaos: ...``; everything is stopped on exit."""

    def __init__(self, settings: ChaosSettings) -> None:
        self.settings = settings
        self.is_postgres = sa.engine.make_url(settings.database_url).get_backend_name() == "postgresql"
        modules = ("bench.workflows", "bench.chaos.poison") if settings.poison else ("bench.workflows",)
        coordinator_args = [
            "--lease-ttl",
            str(settings.lease_ttl),
            "--heartbeat-interval",
            str(settings.heartbeat_interval),
        ]
        if settings.shards is not None:
            coordinator_args += ["--shards", str(settings.shards)]
        executor_args = ["--llm-timeout", str(settings.llm_timeout), "--drain-timeout", "60"]
        if settings.poison:
            executor_args += ["--handlers", "bench.chaos.poison"]
        self.registered_workflows = ["research", "poisoned"] if settings.poison else ["research"]
        self.cluster = LocalCluster(
            ClusterSpec(
                # The coordinator's connections carry a name, so that only they are killed.
                database_url=(
                    postgres.with_application_name(settings.database_url)
                    if self.is_postgres
                    else settings.database_url
                ),
                workdir=settings.workdir,
                workflow_modules=modules,
                executors=0,
                concurrency=settings.concurrency,
                simulator_args=("--latency", settings.latency, "--seed", str(settings.seed)),
                coordinator_args=coordinator_args,
                executor_args=executor_args,
            )
        )
        #: Every executor started, by id, in start order (dead ones included).
        self.executors: dict[str, ManagedProcess] = {}
        self.faults: list[Fault] = []
        self._stopped_on_purpose: set[str] = set()
        self._names = itertools.count(1)
        self._rng = random.Random(settings.seed)
        self._started = time.monotonic()
        #: Set by the driver once every workflow has finished: an executor fault waiting for a
        #: busy executor then gives up (NothingToHit) instead of waiting for ever.
        self.run_over = False
        # The harness's own reads, on connections the injected faults leave alone.
        self._database = sa.create_engine(settings.database_url, poolclass=NullPool)

    def __enter__(self) -> ChaosCluster:
        self.cluster.__enter__()
        try:
            for _ in range(self.settings.executors):
                self.add_executor()
        except BaseException:
            self.cluster.stop()
            raise
        self._started = time.monotonic()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.cluster.stop()
        finally:
            self._database.dispose()

    # ----------------------------------------------------------------- reading

    def client(self) -> AsyncClient:
        return AsyncClient(self.cluster.coordinator_address, timeout=30)

    def add_executor(self) -> str:
        executor_id = f"chaos-executor-{next(self._names)}"
        self.executors[executor_id] = self.cluster.add_executor(extra_args=["--executor-id", executor_id])
        return executor_id

    def live_executors(self) -> list[str]:
        return [name for name, process in self.executors.items() if process.process.poll() is None]

    async def in_flight(self, executor_id: str | None = None) -> int:
        """Tasks leased to ``executor_id`` (default: to any executor) right now."""
        query = sa.select(sa.func.count()).select_from(tasks).where(tasks.c.claimed_by.is_not(None))
        if executor_id is not None:
            query = query.where(tasks.c.claimed_by == executor_id)
        return int(await self._scalar(query))

    async def busy_executor(self) -> str:
        """A live executor, chosen at random among those holding tasks (waiting until one does)."""
        while True:
            busy = [name for name in self.live_executors() if await self.in_flight(name)]
            if busy:
                return self._rng.choice(busy)
            if self.run_over:
                raise NothingToHit("every workflow has finished: no executor will hold tasks again")
            await asyncio.sleep(0.05)

    async def held_tokens(self, executor_id: str) -> dict[int, int]:
        """The fencing token of every task leased to ``executor_id``, by task id."""
        query = sa.select(tasks.c.id, tasks.c.fencing_token).where(tasks.c.claimed_by == executor_id)
        return {task_id: token for task_id, token in await self._rows(query)}

    async def accepted_tokens(self, task_ids: Collection[int]) -> dict[int, int | None]:
        """The fencing token of the result each step was completed with (its task id is the step id)."""
        query = sa.select(steps.c.id, steps.c.result_token).where(steps.c.id.in_(list(task_ids)))
        return {step_id: token for step_id, token in await self._rows(query)}

    def simulator_stats(self) -> dict[str, Any]:
        return self._simulator("GET", "/_sim/stats")

    def check(self) -> InvariantReport:
        return invariants.check(
            self.settings.database_url,
            registered_workflows=self.registered_workflows,
            simulator_stats=self.simulator_stats(),
            faults=self.faults,
        )

    # ------------------------------------------------------------------ faults

    async def kill_executor(self, executor_id: str | None = None, *, replace: bool = True) -> str:
        """SIGKILL an executor (by default a random one holding tasks) and start a replacement."""
        executor_id = executor_id or await self.busy_executor()
        in_flight = await self.in_flight(executor_id)
        self._stopped_on_purpose.add(executor_id)
        process = self.executors[executor_id]
        process.signal(signal.SIGKILL)
        await asyncio.to_thread(process.process.wait)
        self._record("executor SIGKILL", executor_id, in_flight)
        if replace:
            self.add_executor()
        return executor_id

    async def restart_executor_in_place(self, executor_id: str | None = None) -> str:
        """SIGKILL an executor (by default a random one holding tasks) and start it again under
        the same id at once, well within its lease, as a supervisor does for a fixed
        ``--executor-id``: the new process's Hello must not strand or re-run for free what
        the dead one held."""
        executor_id = executor_id or await self.busy_executor()
        in_flight = await self.in_flight(executor_id)
        process = self.executors[executor_id]
        process.signal(signal.SIGKILL)
        await asyncio.to_thread(process.process.wait)
        self._record("executor SIGKILL + restart, same id", executor_id, in_flight)
        self.executors[executor_id] = self.cluster.add_executor(extra_args=["--executor-id", executor_id])
        return executor_id

    async def pause_executor_past_lease(self, executor_id: str) -> dict[int, int]:
        """SIGSTOP an executor until the coordinator has expired its lease, then SIGCONT it.

        It wakes up believing it still holds its tasks and reports their results late.
        Returns the tasks the coordinator took back from it, with their fencing tokens.
        """
        process = self.executors[executor_id]
        process.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        # Results and credits it sent just before freezing still reach the coordinator,
        # which completes some tasks and leases it new ones meanwhile. The last reading
        # before the lease expired is what the coordinator took back: a frozen process
        # sends nothing, so nothing it holds can finish in between.
        held: dict[int, int] = {}
        try:
            state = sa.select(executors.c.state).where(executors.c.id == executor_id)
            deadline = stopped_at + self.settings.lease_ttl * 4 + 30
            while True:
                # Read before the state: if the expiry commits in between, this reading is
                # empty (it came after) or complete (it came before).
                held = await self.held_tokens(executor_id) or held
                if await self._scalar(state) == "expired":
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"the coordinator never expired the lease of paused {executor_id}")
                await asyncio.sleep(0.1)
        finally:
            process.signal(signal.SIGCONT)
        self._record("executor SIGSTOP past lease", executor_id, len(held), at=stopped_at)
        return held

    async def stop_executor(self, executor_id: str, *, within: float) -> int | None:
        """SIGTERM an executor (a graceful drain); its exit code, or None if it runs past ``within`` s."""
        in_flight = await self.in_flight(executor_id)
        self._stopped_on_purpose.add(executor_id)
        process = self.executors[executor_id]
        process.signal(signal.SIGTERM)
        self._record("executor SIGTERM", executor_id, in_flight)
        try:
            return await asyncio.to_thread(process.process.wait, within)
        except subprocess.TimeoutExpired:
            return None

    async def wait_exit(self, executor_id: str, *, within: float) -> int | None:
        """The exit code of an executor told to leave some other way (BumpEpoch), or None if it did not."""
        self._stopped_on_purpose.add(executor_id)
        try:
            return await asyncio.to_thread(self.executors[executor_id].process.wait, within)
        except subprocess.TimeoutExpired:
            return None

    async def replace_crashed_executors(self) -> list[str]:
        """Record and replace executors that died on their own (a poison task killed them)."""
        crashed = [
            name
            for name, process in self.executors.items()
            if process.process.poll() is not None and name not in self._stopped_on_purpose
        ]
        for name in crashed:
            self._stopped_on_purpose.add(name)
            self._record("executor crashed", name, await self.in_flight(name))
            self.add_executor()
        return crashed

    async def restart_crashed_executors_in_place(self) -> list[str]:
        """Record executors that died on their own and start each again under its own id,
        as a supervisor does for an executor with a fixed ``--executor-id``."""
        crashed = [
            name
            for name, process in self.executors.items()
            if process.process.poll() is not None and name not in self._stopped_on_purpose
        ]
        for name in crashed:
            self._record("executor crashed", name, await self.in_flight(name))
            self.executors[name] = self.cluster.add_executor(extra_args=["--executor-id", name])
        return crashed

    async def restart_coordinator(self) -> None:
        """SIGKILL the coordinator mid-run and start a new one on the same port."""
        in_flight = await self.in_flight()
        port = int(self.cluster.coordinator_address.rsplit(":", 1)[1])
        coordinator = self.cluster.coordinator
        assert coordinator is not None
        coordinator.signal(signal.SIGKILL)
        await asyncio.to_thread(coordinator.process.wait)
        self._record("coordinator SIGKILL + restart", f"port {port}", in_flight)
        await asyncio.to_thread(self.cluster.start_coordinator, port)

    async def drain_through_coordinator_restart(
        self, executor_id: str | None = None, *, within: float
    ) -> int | None:
        """SIGTERM an executor holding tasks, restart the coordinator while it drains, and start
        a replacement. The drainer must reconnect as draining, report what it holds and
        exit; returns its exit code, or None if it runs past ``within`` seconds."""
        executor_id = executor_id or await self.busy_executor()
        in_flight = await self.in_flight(executor_id)
        self._stopped_on_purpose.add(executor_id)
        process = self.executors[executor_id]
        process.signal(signal.SIGTERM)
        self._record("executor SIGTERM", executor_id, in_flight)
        await self.restart_coordinator()
        self.add_executor()
        try:
            return await asyncio.to_thread(process.process.wait, within)
        except subprocess.TimeoutExpired:
            return None

    async def restart_database(self, *, sqlite_lock_seconds: float = 3.0) -> None:
        """PostgreSQL: restart the server. SQLite: another process holds the write lock for a while."""
        in_flight = await self.in_flight()
        if self.is_postgres:
            self._record("PostgreSQL restart", "pg_ctlcluster restart", in_flight)
            await asyncio.to_thread(self.settings.postgres_server.restart)
        else:
            self._record("SQLite write lock held", f"{sqlite_lock_seconds:.0f}s", in_flight)
            await asyncio.to_thread(self._hold_sqlite_write_lock, sqlite_lock_seconds)

    async def kill_database_connections(self) -> int:
        """``pg_terminate_backend`` every connection of the coordinator; returns how many."""
        if not self.is_postgres:
            raise ConfigurationError("killing database connections needs PostgreSQL")
        in_flight = await self.in_flight()
        killed = await asyncio.to_thread(postgres.terminate_connections, self.settings.database_url)
        self._record("pg_terminate_backend", f"{killed} connection(s)", in_flight)
        return killed

    def configure_simulator(self, description: str, **fields: Any) -> None:
        """Change the simulator's faults live (see conveyor/testing/simulator/README.md).

        Recorded with nothing in flight: a failed, hung or truncated answer is never
        a success, so these faults must cause no duplicate at all.
        """
        self._simulator("POST", "/_sim/config", fields)
        self._record("simulator", description, 0)

    async def until_simulator_served(self, counter: str, more: int, *, timeout: float = 120.0) -> None:
        """Wait until the simulator's ``counter`` (e.g. ``"overloaded"``) has grown by ``more``."""
        target = self.simulator_stats()[counter] + more
        deadline = time.monotonic() + timeout
        while self.simulator_stats()[counter] < target:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the simulator served fewer than {more} more {counter} in {timeout:.0f}s"
                )
            await asyncio.sleep(0.05)

    # ----------------------------------------------------------------- helpers

    def elapsed(self) -> float:
        """Seconds since the cluster was up, the time base of :attr:`faults`."""
        return time.monotonic() - self._started

    def _record(self, kind: str, target: str, in_flight: int, *, at: float | None = None) -> None:
        moment = time.monotonic() if at is None else at
        self.faults.append(Fault(round(moment - self._started, 1), kind, target, in_flight))

    async def bump_epoch(self, client: AsyncClient) -> list[str]:
        """BumpEpoch: every live executor is told to drain and exit. Returns their ids."""
        draining = self.live_executors()
        self._stopped_on_purpose.update(draining)
        in_flight = await self.in_flight()
        await client.bump_epoch("chaos: BumpEpoch during load")
        self._record("BumpEpoch", f"{len(draining)} executor(s) draining", in_flight)
        return draining

    async def _scalar(self, query: sa.Select[Any]) -> Any:
        def read() -> Any:
            with self._database.connect() as connection:
                return connection.execute(query).scalar()

        return await asyncio.to_thread(read)

    async def _rows(self, query: sa.Select[Any]) -> list[tuple[Any, ...]]:
        def read() -> list[tuple[Any, ...]]:
            with self._database.connect() as connection:
                return [tuple(row) for row in connection.execute(query)]

        return await asyncio.to_thread(read)

    def _hold_sqlite_write_lock(self, seconds: float) -> None:
        path = sa.engine.make_url(self.settings.database_url).database
        connection = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        try:
            connection.execute("BEGIN EXCLUSIVE")
            time.sleep(seconds)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    def _simulator(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.cluster.simulator_url is not None
        request = urllib.request.Request(
            self.cluster.simulator_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result
