"""A discrete-event simulation of Conveyor with N coordinators owning shard ranges on one PostgreSQL.

What it models (docs/scaling.md explains why each part is there):

* **Workflows** of the benchmark's shape (``bench/workflows.py``: one step, two in parallel,
  one), arriving as a Poisson process at the offered load, each hashed to one of ``shards``
  shards; shards are split into contiguous ranges, one per coordinator (the range's owner).
* **A coordinator** is two servers in a row, as in the real process: its event loop (one
  core: gRPC, replay, statement building; ``coordinator_cpu_per_step`` each step, plus
  ``coordinator_cpu_per_transaction``) and its single writer, which takes everything the
  loop has prepared (up to ``max_steps_per_transaction``) into one transaction and waits
  for it to commit before taking the next (group commit).
* **PostgreSQL**, shared by every coordinator: ``database_cores`` servers executing
  transactions (``database_cpu_per_step`` x steps + ``database_cpu_per_transaction``),
  ``round_trips_per_transaction`` network round trips the writer waits through, and one
  WAL flusher that makes every transaction waiting at that moment durable with one flush
  (``wal_flush_seconds`` + bytes / ``wal_bandwidth``): PostgreSQL's group commit.
* **Executors**: ``slots`` concurrent LLM calls in total, each claiming the oldest ready task
  across every live owner (executors hold a stream to each owner and ask the owner whose
  queue head is oldest: FIFO across owners), LLM latency uniform in ``llm_latency``.
* **A failover**: at ``failover_at`` one owner stops; its queued and uncommitted work is
  lost from memory but not from the system: executors keep the results they could not
  report, its ready tasks wait in the database, and after ``takeover_seconds`` a standby
  owns the range and everything is reported again (issue 14's takeover bound).

The costs come from measurements (``python -m bench dbcost``, ``python -m bench overhead``);
:data:`MEASURED` holds the numbers docs/scaling.md quotes. Pure Python, deterministic for a
given seed. ``python -m bench scaling-sim`` runs the sweeps and writes a table, JSON and plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The research workflow's waves: one step, then two in parallel, then one.
WAVES = (1, 2, 1)
STEPS_PER_WORKFLOW = sum(WAVES)
#: Steps per second one coordinator sustains on PostgreSQL today (``python -m bench overhead``,
#: 2 x 200 slots on the 2-core machine): the "1x" of the projections.
TODAY_STEPS_PER_SECOND = 1000.0


@dataclass(frozen=True)
class CostModel:
    """What one step and one transaction cost; seconds and bytes."""

    coordinator_cpu_per_step: float
    coordinator_cpu_per_transaction: float
    database_cpu_per_step: float
    database_cpu_per_transaction: float
    wal_bytes_per_step: float
    wal_flush_seconds: float
    wal_bandwidth: float
    round_trips_per_transaction: float
    round_trip_seconds: float
    max_steps_per_transaction: int = 2048


#: Per step and per transaction, measured on the 2-core machine on 2026-12-06 (docs/scaling.md):
#: ``python -m bench dbcost`` on PostgreSQL (2 executors x 200 slots, 3,000 workflows) for the
#: coordinator's and PostgreSQL's CPU, WAL bytes and statements per transaction; pg_test_fsync
#: for the flush. The machine was shared (1.3-1.6 other cores busy), which inflates CPU per
#: step about threefold against the quieter benchmark suite (0.27-0.65 coordinator ms per step):
#: these are the pessimistic numbers. Per-transaction CPU and the round trip are assumptions.
#: The WAL bandwidth is an assumed production ceiling for one PostgreSQL, not this VM's disk
#: (45 MB/s with fdatasync here; ``--wal-bandwidth-mb 45`` shows what that does).
MEASURED = CostModel(
    coordinator_cpu_per_step=1.14e-3,
    coordinator_cpu_per_transaction=0.2e-3,
    database_cpu_per_step=0.72e-3,
    database_cpu_per_transaction=0.1e-3,
    wal_bytes_per_step=5480.0,
    wal_flush_seconds=2.5e-3,
    wal_bandwidth=500e6,
    round_trips_per_transaction=14.0,
    round_trip_seconds=0.1e-3,
)


@dataclass(frozen=True)
class Scenario:
    coordinators: int
    offered_steps_per_second: float
    cost: CostModel = MEASURED
    database_cores: int = 8
    shards: int = 100
    #: Executor slots in total; 0 sizes them to twice the offered load's calls in flight.
    slots: int = 0
    llm_latency: tuple[float, float] = (0.5, 1.5)
    duration: float = 20.0
    warmup: float = 5.0
    failover_at: float | None = None
    takeover_seconds: float = 10.0
    failed_owner: int = 0
    #: Each simulated workflow stands for this many real ones (costs scale, counts do not):
    #: lets 100x loads run in seconds; 1 simulates every workflow.
    weight: int = 1
    seed: int = 1

    def total_slots(self) -> int:
        if self.slots:
            return self.slots
        mean_latency = sum(self.llm_latency) / 2
        return max(1, math.ceil(2 * self.offered_steps_per_second * mean_latency / self.weight))


@dataclass
class _Workflow:
    id: int
    owner: int
    created: float
    wave: int = 0
    remaining: int = 0
    completed: float | None = None


@dataclass
class _Unit:
    """A start or a result waiting for an owner to commit it."""

    serial: int
    workflow: _Workflow
    #: The step's number in the workflow, or -1 for the workflow's start.
    step: int
    reported: float
    #: When the step became ready to claim (its task was committed); unused for a start.
    ready_at: float


#: A ready task: FIFO key (workflow creation time, task id), then the workflow, step and ready time.
_Task = tuple[float, int, _Workflow, int, float]


@dataclass
class _Owner:
    index: int
    up: bool = True
    generation: int = 0
    loop_queue: deque[_Unit] = field(default_factory=deque)
    loop_busy: bool = False
    writer_queue: deque[_Unit] = field(default_factory=deque)
    writer_busy: bool = False
    writer_since: float = 0.0
    #: Units in the event loop or the writer right now (lost from memory if the owner stops).
    in_flight: dict[int, _Unit] = field(default_factory=dict)
    #: Results and starts the owner could not take while it was down (executors and clients hold them).
    held: list[_Unit] = field(default_factory=list)
    #: Ready tasks an executor could not claim because the owner was down.
    parked: list[_Task] = field(default_factory=list)


@dataclass
class Result:
    scenario: Scenario
    steps_per_second: float
    latency_p50: float
    latency_p99: float
    workflows_started: int
    workflows_completed: int
    steps_committed: int
    steps_in_system: int
    #: Steps made ready that are neither committed nor anywhere in the system at the end
    #: (a queue, an executor slot, an owner's memory, held for a standby): must be 0.
    steps_lost: int
    #: Started workflows neither completed nor with a step or start anywhere in the system: must be 0.
    workflows_stranded: int
    duplicate_applies: int
    #: Little's law, L = lambda x W, over the run: time-average steps between ready and committed,
    #: steps committed per second, and their mean time from ready to committed.
    little_mean_in_system: float
    little_arrival_rate: float
    little_mean_sojourn: float
    throughput_series: list[tuple[float, float]]
    database_busy: float
    #: Share of the time a WAL flush was under way (near 1 is normal: group commit batches more).
    wal_flush_busy: float
    #: WAL bytes per second against the device's bandwidth: the WAL ceiling.
    wal_bandwidth_share: float
    wal_bytes_per_second: float
    wal_flushes_per_second: float
    transactions_per_second: float
    coordinator_busy: float
    #: Share of the time each owner's single writer had a transaction under way (mean over owners):
    #: its PostgreSQL backend runs the transaction on one core, so near 1 the writer is the limit.
    writer_busy: float

    def as_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["scenario"] = dataclasses.asdict(self.scenario)
        return document


class Simulation:
    """One run of one :class:`Scenario`; :meth:`run` returns its :class:`Result`."""

    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.cost = scenario.cost
        self.random = random.Random(scenario.seed)
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self.owners = [_Owner(i) for i in range(scenario.coordinators)]
        self.free_slots = scenario.total_slots()
        #: Tasks on executors now (what the slots in use hold).
        self.running: dict[int, _Task] = {}
        self.ready: list[_Task] = []
        self._serials = itertools.count()
        self._task_ids = itertools.count()
        self.workflows: list[_Workflow] = []
        # PostgreSQL: CPU servers and one WAL flusher.
        self.database_free = scenario.database_cores
        self.database_queue: deque[tuple[float, Callable[[], None]]] = deque()
        self.flush_waiting: list[tuple[float, Callable[[], None]]] = []
        self.flushing = False
        # Measurements.
        self.applied: set[tuple[int, int]] = set()
        self.duplicates = 0
        self.commit_times: list[float] = []
        self.latencies: list[tuple[float, float]] = []
        self.sojourns: list[float] = []
        self.steps_made_ready = 0
        self.database_busy_seconds = 0.0
        self.coordinator_busy_seconds = 0.0
        self.writer_busy_seconds = 0.0
        self.flushes = 0
        self.flush_busy_seconds = 0.0
        self.wal_bytes = 0.0
        self.transactions = 0
        #: Steps between ready and committed, integrated over time, for Little's law.
        self._in_system = 0
        self._in_system_area = 0.0
        self._in_system_since = 0.0

    # -- the event loop ---------------------------------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._sequence), action))

    def run(self) -> Result:
        s = self.s
        if s.failover_at is not None:
            self.at(s.failover_at, lambda: self.stop_owner(s.failed_owner))
            self.at(s.failover_at + s.takeover_seconds, lambda: self.take_over(s.failed_owner))
        self.at(0.0, self.arrivals)
        end = s.duration
        while self._events and self._events[0][0] <= end:
            self.now, _, action = heapq.heappop(self._events)
            action()
        self.now = end
        self._count_in_system(0)
        return self.result()

    # -- arrivals and executors -------------------------------------------------------------------

    #: Seconds between StartWorkflows calls of the load generator.
    ARRIVAL_TICK = 0.01

    def arrivals(self) -> None:
        s = self.s
        rate = s.offered_steps_per_second / STEPS_PER_WORKFLOW / s.weight
        count = self._poisson(rate * self.ARRIVAL_TICK)
        for _ in range(count):
            index = len(self.workflows)
            shard = self.random.randrange(s.shards)
            workflow = _Workflow(index, shard * s.coordinators // s.shards, self.now)
            self.workflows.append(workflow)
            self.report(_Unit(next(self._serials), workflow, -1, self.now, self.now))
        if self.now + self.ARRIVAL_TICK < s.duration - 0.0:
            self.at(self.now + self.ARRIVAL_TICK, self.arrivals)

    def _poisson(self, mean: float) -> int:
        if mean > 30:  # normal approximation: exact enough, and cheap
            return max(0, round(self.random.gauss(mean, math.sqrt(mean))))
        limit, k, product = math.exp(-mean), 0, self.random.random()
        while product > limit:
            k += 1
            product *= self.random.random()
        return k

    def dispatch(self) -> None:
        """Executors with a free slot claim the oldest ready task of any live owner."""
        low, high = self.s.llm_latency
        while self.free_slots > 0 and self.ready:
            task = heapq.heappop(self.ready)
            workflow = task[2]
            owner = self.owners[workflow.owner]
            if not owner.up:
                owner.parked.append(task)
                continue
            self.free_slots -= 1
            self.running[task[1]] = task
            self.at(self.now + self.random.uniform(low, high), functools.partial(self.finish, task))

    def finish(self, task: _Task) -> None:
        self.free_slots += 1
        del self.running[task[1]]
        self.report(_Unit(next(self._serials), task[2], task[3], self.now, task[4]))
        self.dispatch()

    # -- an owner: event loop, then writer --------------------------------------------------------

    def report(self, unit: _Unit) -> None:
        owner = self.owners[unit.workflow.owner]
        if not owner.up:
            owner.held.append(unit)
            return
        owner.loop_queue.append(unit)
        self._run_loop(owner)

    def _run_loop(self, owner: _Owner) -> None:
        if owner.loop_busy or not owner.loop_queue or not owner.up:
            return
        # The loop works through what arrived in pieces of at most a transaction's worth, as the
        # coordinator's event loop handles one RPC batch at a time (not a backlog in one go).
        batch: list[_Unit] = []
        steps = 0
        while owner.loop_queue and steps < self.cost.max_steps_per_transaction:
            unit = owner.loop_queue.popleft()
            batch.append(unit)
            steps += self.s.weight if unit.step >= 0 else 0
        owner.loop_busy = True
        owner.in_flight.update((unit.serial, unit) for unit in batch)
        # One loop batch feeds about one transaction: its fixed CPU (statements, savepoints) is here too.
        busy = self.cost.coordinator_cpu_per_step * steps + self.cost.coordinator_cpu_per_transaction
        self.coordinator_busy_seconds += self._within_run(busy)
        generation = owner.generation
        self.at(self.now + busy, lambda: self._loop_done(owner, generation, batch))

    def _loop_done(self, owner: _Owner, generation: int, batch: list[_Unit]) -> None:
        if generation != owner.generation:
            return
        owner.loop_busy = False
        owner.writer_queue.extend(batch)
        self._run_writer(owner)
        self._run_loop(owner)

    def _run_writer(self, owner: _Owner) -> None:
        if owner.writer_busy or not owner.writer_queue or not owner.up:
            return
        cost = self.cost
        batch: list[_Unit] = []
        steps = 0
        while owner.writer_queue and steps < cost.max_steps_per_transaction:
            unit = owner.writer_queue.popleft()
            batch.append(unit)
            steps += self.s.weight if unit.step >= 0 else 0
        owner.writer_busy = True
        owner.writer_since = self.now
        generation = owner.generation
        self.transactions += 1
        network = cost.round_trips_per_transaction * cost.round_trip_seconds
        work = cost.database_cpu_per_transaction + cost.database_cpu_per_step * steps
        wal_bytes = cost.wal_bytes_per_step * steps

        def committed() -> None:
            self._commit(owner, generation, batch)

        def executed() -> None:
            self._flush(wal_bytes, committed)

        self.at(
            self.now + network,
            lambda: self._execute(work, executed),
        )

    # -- PostgreSQL: CPU servers and group commit -------------------------------------------------

    def _execute(self, work: float, then: Callable[[], None]) -> None:
        self.database_queue.append((work, then))
        self._run_database()

    def _run_database(self) -> None:
        while self.database_free >= 1 and self.database_queue:
            work, then = self.database_queue.popleft()
            self.database_free -= 1
            self.database_busy_seconds += self._within_run(work)

            def done(then: Callable[[], None] = then) -> None:
                self.database_free += 1
                then()
                self._run_database()

            self.at(self.now + work, done)

    def _within_run(self, busy: float) -> float:
        """The part of ``busy`` seconds starting now that falls inside the simulated run."""
        return max(0.0, min(busy, self.s.duration - self.now))

    def _flush(self, wal_bytes: float, then: Callable[[], None]) -> None:
        self.flush_waiting.append((wal_bytes, then))
        if not self.flushing:
            self._start_flush()

    def _start_flush(self) -> None:
        waiting, self.flush_waiting = self.flush_waiting, []
        self.flushing = True
        self.flushes += 1
        size = sum(b for b, _ in waiting)
        duration = self.cost.wal_flush_seconds + size / self.cost.wal_bandwidth
        self.flush_busy_seconds += self._within_run(duration)
        self.wal_bytes += size

        def flushed() -> None:
            for _, then in waiting:
                then()
            self.flushing = False
            if self.flush_waiting:
                self._start_flush()

        self.at(self.now + duration, flushed)

    def _commit(self, owner: _Owner, generation: int, batch: list[_Unit]) -> None:
        if generation != owner.generation:
            return  # fenced: the owner lost its term while this transaction ran
        owner.writer_busy = False
        self.writer_busy_seconds += min(self.now, self.s.duration) - min(owner.writer_since, self.s.duration)
        for unit in batch:
            del owner.in_flight[unit.serial]
            self._apply(unit)
        self.dispatch()
        self._run_writer(owner)

    def _apply(self, unit: _Unit) -> None:
        workflow = unit.workflow
        if unit.step >= 0:
            key = (workflow.id, unit.step)
            if key in self.applied:
                self.duplicates += 1
                return
            self.applied.add(key)
            self.commit_times.append(self.now)
            self.latencies.append((unit.reported, self.now - unit.reported))
            self.sojourns.append(self.now - unit.ready_at)
            self._count_in_system(-1)
            workflow.remaining -= 1
            if workflow.remaining > 0:
                return
            workflow.wave += 1
            if workflow.wave == len(WAVES):
                workflow.completed = self.now
                return
        elif workflow.remaining or workflow.wave:
            self.duplicates += 1  # a start applied twice
            return
        first = sum(WAVES[: workflow.wave])
        workflow.remaining = WAVES[workflow.wave]
        for step in range(first, first + WAVES[workflow.wave]):
            heapq.heappush(self.ready, (workflow.created, next(self._task_ids), workflow, step, self.now))
            self.steps_made_ready += 1
            self._count_in_system(+1)

    # -- failover ---------------------------------------------------------------------------------

    def stop_owner(self, index: int) -> None:
        """The owner dies: what it held in memory goes back to the executors and clients that sent it."""
        owner = self.owners[index]
        owner.up = False
        owner.generation += 1
        # The writer's queue is part of in_flight (units stay there until committed).
        owner.held.extend(owner.in_flight.values())
        owner.held.extend(owner.loop_queue)
        owner.in_flight, owner.loop_queue, owner.writer_queue = {}, deque(), deque()
        owner.loop_busy = owner.writer_busy = False

    def take_over(self, index: int) -> None:
        """A standby owns the range: executors re-report what they held, its tasks are claimable."""
        owner = self.owners[index]
        owner.up = True
        held, owner.held = owner.held, []
        for task in owner.parked:
            heapq.heappush(self.ready, task)
        owner.parked = []
        for unit in held:
            owner.loop_queue.append(unit)
        self._run_loop(owner)
        self.dispatch()

    # -- results ----------------------------------------------------------------------------------

    def _count_in_system(self, change: int) -> None:
        """Steps between "ready" and "committed" (queued, running, reported): N of Little's law."""
        self._in_system_area += self._in_system * (self.now - self._in_system_since)
        self._in_system_since = self.now
        self._in_system += change

    def result(self) -> Result:
        s = self.s
        window = [t for t in self.commit_times if t >= s.warmup]
        measured = s.duration - s.warmup
        latencies = sorted(latency for reported, latency in self.latencies if reported >= s.warmup)
        buckets: dict[int, int] = {}
        for t in self.commit_times:
            buckets[int(t / 0.5)] = buckets.get(int(t / 0.5), 0) + 1
        series = [(b * 0.5, n * s.weight / 0.5) for b, n in sorted(buckets.items())]
        committed_steps = len(self.commit_times)
        lost, stranded = self.census()
        return Result(
            scenario=s,
            steps_per_second=len(window) * s.weight / measured,
            latency_p50=_percentile(latencies, 50),
            latency_p99=_percentile(latencies, 99),
            workflows_started=len(self.workflows),
            workflows_completed=sum(1 for w in self.workflows if w.completed is not None),
            steps_committed=committed_steps,
            steps_in_system=self._in_system,
            steps_lost=lost,
            workflows_stranded=stranded,
            duplicate_applies=self.duplicates,
            little_mean_in_system=self._in_system_area / s.duration,
            little_arrival_rate=committed_steps / s.duration,
            little_mean_sojourn=sum(self.sojourns) / len(self.sojourns) if self.sojourns else math.nan,
            throughput_series=series,
            database_busy=self.database_busy_seconds / (s.duration * s.database_cores),
            wal_flush_busy=self.flush_busy_seconds / s.duration,
            wal_bandwidth_share=self.wal_bytes / s.duration / self.cost.wal_bandwidth,
            wal_bytes_per_second=self.wal_bytes / s.duration,
            wal_flushes_per_second=self.flushes / s.duration,
            transactions_per_second=self.transactions / s.duration,
            coordinator_busy=self.coordinator_busy_seconds / (s.duration * s.coordinators),
            writer_busy=self.writer_busy_seconds / (s.duration * s.coordinators),
        )

    def census(self) -> tuple[int, int]:
        """Where every step and workflow is at the end: (steps lost, workflows stranded).

        Counted from the containers themselves (queues, executor slots, owners' memory, what
        executors and clients hold for a standby), not from the counters the run keeps.
        """
        units: list[_Unit] = []
        tasks: list[_Task] = [*self.ready, *self.running.values()]
        for owner in self.owners:
            units += [*owner.in_flight.values(), *owner.loop_queue, *owner.held]
            tasks += owner.parked
        step_units = [unit for unit in units if unit.step >= 0]
        located = len(tasks) + len(step_units)
        lost = self.steps_made_ready - len(self.applied) - located
        alive = {task[2].id for task in tasks} | {unit.workflow.id for unit in units}
        stranded = sum(1 for w in self.workflows if w.completed is None and w.id not in alive)
        return lost, stranded


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def simulate(scenario: Scenario) -> Result:
    return Simulation(scenario).run()


# -- the command ----------------------------------------------------------------------------------

NAME = "scaling-sim"
#: PostgreSQL connections one coordinator opens: its writer and a reader pool of four.
CONNECTIONS_PER_COORDINATOR = 5
#: ``max_connections`` of a default PostgreSQL (and of the one here).
MAX_CONNECTIONS = 100
#: A resource this busy is the bottleneck (queues grow without bound near 1).
SATURATED = 0.8


def bottleneck(result: Result) -> str:
    """The busiest resource, and whether the run kept up with its offered load."""
    s = result.scenario
    loads = {
        "coordinator CPU": result.coordinator_busy,
        "single writer": result.writer_busy,
        "PostgreSQL CPU": result.database_busy,
        "WAL bandwidth": result.wal_bandwidth_share,
    }
    name, busy = max(loads.items(), key=lambda item: item[1])
    kept_up = result.steps_per_second >= 0.95 * s.offered_steps_per_second
    label = f"{name} {busy:.0%}"
    if CONNECTIONS_PER_COORDINATOR * s.coordinators > MAX_CONNECTIONS:
        label += f"; {CONNECTIONS_PER_COORDINATOR * s.coordinators} connections > {MAX_CONNECTIONS}"
    if not kept_up:
        return f"saturated: {label}"
    return label if busy >= SATURATED else f"none ({label})"


def failover_dip(result: Result) -> dict[str, float]:
    """Steps not committed because of the failover, and how long throughput took to come back."""
    s = result.scenario
    assert s.failover_at is not None
    offered = s.offered_steps_per_second
    series = result.throughput_series
    before = [rate for t, rate in series if s.warmup <= t < s.failover_at]
    baseline = sum(before) / len(before) if before else offered
    after_takeover = s.failover_at + s.takeover_seconds
    recovered_at = next(
        (
            t
            for t, rate in series
            if t >= after_takeover and rate <= 1.1 * baseline and _settled(series, t, baseline)
        ),
        math.nan,
    )
    end = recovered_at if not math.isnan(recovered_at) else s.duration
    deficit, worst = 0.0, 0.0
    for t, rate in series:
        if s.failover_at <= t < end:
            deficit += (baseline - rate) * 0.5
            worst = max(worst, deficit)
    return {
        "baseline_steps_per_second": baseline,
        "most_steps_behind": worst,
        "lowest_steps_per_second": min((rate for t, rate in series if s.failover_at <= t < end), default=0.0),
        "peak_steps_per_second_after_takeover": max(
            (rate for t, rate in series if t >= after_takeover), default=0.0
        ),
        "seconds_until_back_to_baseline": end - s.failover_at,
    }


def _settled(series: list[tuple[float, float]], start: float, baseline: float) -> bool:
    """From ``start`` on, every half second stays within 15% of the baseline (the backlog is gone)."""
    return all(abs(rate - baseline) <= 0.15 * baseline for t, rate in series if start <= t < series[-1][0])


def _weight_for(load: float, duration: float, max_steps: int) -> int:
    return max(1, math.ceil(load * duration / max_steps))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .harness.options import int_list

    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--today", type=float, default=TODAY_STEPS_PER_SECOND, help="steps/s of 1x load (default %(default)s)"
    )
    # The sweeps' lists, their defaults written into the help as they are typed (1,2,4).
    for flag, default, text in (
        ("--coordinators", [1, 2, 4, 8, 16, 32, 64], "coordinator counts of the sweep over coordinators"),
        ("--coordinator-loads", [10, 100], "loads (multiples of --today) the coordinator sweep runs at"),
        ("--loads", [1, 2, 5, 10, 20, 50, 100], "loads (multiples of --today) of the sweep over load"),
        ("--load-coordinators", [1, 16], "coordinator counts the load sweep runs with"),
    ):
        typed = ",".join(map(str, default))
        parser.add_argument(flag, type=int_list, default=default, help=f"{text} (default {typed})")
    parser.add_argument(
        "--database-cores", type=int, default=16, help="PostgreSQL cores (default %(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=20.0, help="simulated seconds per run (default %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds left out of rates (default %(default)s)"
    )
    parser.add_argument(
        "--max-simulated-steps",
        type=int,
        default=40_000,
        help="above this many steps per run, one simulated workflow stands for several (default %(default)s)",
    )
    parser.add_argument(
        "--failover-coordinators",
        type=int,
        default=16,
        help="coordinators in the failover run (default %(default)s)",
    )
    parser.add_argument(
        "--failover-load",
        type=float,
        default=10.0,
        help="load of the failover run, x --today (default %(default)s)",
    )
    parser.add_argument(
        "--takeover", type=float, default=10.0, help="seconds until a standby owns the range (default 10)"
    )
    parser.add_argument(
        "--coordinator-cpu-ms",
        type=float,
        default=MEASURED.coordinator_cpu_per_step * 1e3,
        help="coordinator CPU per step (default %(default)s)",
    )
    parser.add_argument(
        "--database-cpu-ms",
        type=float,
        default=MEASURED.database_cpu_per_step * 1e3,
        help="PostgreSQL CPU per step (default %(default)s)",
    )
    parser.add_argument(
        "--wal-bytes",
        type=float,
        default=MEASURED.wal_bytes_per_step,
        help="WAL bytes per step (default %(default)s)",
    )
    parser.add_argument(
        "--wal-flush-ms",
        type=float,
        default=MEASURED.wal_flush_seconds * 1e3,
        help="one WAL flush (fdatasync) (default %(default)s)",
    )
    parser.add_argument(
        "--wal-bandwidth-mb",
        type=float,
        default=MEASURED.wal_bandwidth / 1e6,
        help="WAL bytes per second one PostgreSQL can write, in MB (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("results") / "scaling",
        help="results folder (default %(default)s/)",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .harness import machine, plots, report

    console = Console()
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe()
    cost = dataclasses.replace(
        MEASURED,
        coordinator_cpu_per_step=args.coordinator_cpu_ms / 1e3,
        database_cpu_per_step=args.database_cpu_ms / 1e3,
        wal_bytes_per_step=args.wal_bytes,
        wal_flush_seconds=args.wal_flush_ms / 1e3,
        wal_bandwidth=args.wal_bandwidth_mb * 1e6,
    )
    base = Scenario(
        cost=cost,
        coordinators=1,
        offered_steps_per_second=args.today,
        database_cores=args.database_cores,
        duration=args.duration,
        warmup=args.warmup,
        seed=args.seed,
    )

    def at_load(scenario: Scenario, multiple: float, coordinators: int) -> Scenario:
        load = multiple * args.today
        return dataclasses.replace(
            scenario,
            coordinators=coordinators,
            offered_steps_per_second=load,
            weight=_weight_for(load, scenario.duration, args.max_simulated_steps),
        )

    plan: list[tuple[str, Scenario]] = []
    for multiple in args.coordinator_loads:
        plan += [(f"coordinators @ {multiple}x", at_load(base, multiple, n)) for n in args.coordinators]
    for n in args.load_coordinators:
        plan += [(f"load @ {n} coordinators", at_load(base, multiple, n)) for multiple in args.loads]
    failover_duration = max(args.duration, 3 * args.takeover + 10)
    failover = dataclasses.replace(
        at_load(
            dataclasses.replace(base, duration=failover_duration),
            args.failover_load,
            args.failover_coordinators,
        ),
        failover_at=args.warmup + 5,
        takeover_seconds=args.takeover,
    )
    plan.append(("failover", failover))
    console.print(
        f"[bold]Scaling simulation[/bold]: {len(plan)} runs, 1x = {args.today:,.0f} steps/s, PostgreSQL with "
        f"{args.database_cores} cores; results in {out.path}/"
    )
    results: list[tuple[str, Result]] = []
    with Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("simulating", total=len(plan))
        for sweep, scenario in plan:
            progress.update(
                bar,
                description=f"{sweep}: N={scenario.coordinators}, {scenario.offered_steps_per_second:,.0f}/s",
            )
            results.append((sweep, simulate(scenario)))
            progress.advance(bar)
    headers = [
        "sweep",
        "coordinators",
        "offered steps/s",
        "steps/s",
        "result → committed p50 ms",
        "p99 ms",
        "coordinator busy",
        "writer busy",
        "PostgreSQL CPU busy",
        "WAL MB/s",
        "WAL flushes/s",
        "transactions/s",
        "connections",
        "first bottleneck",
    ]
    rows = [
        [
            sweep,
            r.scenario.coordinators,
            r.scenario.offered_steps_per_second,
            r.steps_per_second,
            r.latency_p50 * 1000,
            r.latency_p99 * 1000,
            f"{r.coordinator_busy:.0%}",
            f"{r.writer_busy:.0%}",
            f"{r.database_busy:.0%}",
            r.wal_bytes_per_second / 1e6,
            r.wal_flushes_per_second,
            r.transactions_per_second,
            CONNECTIONS_PER_COORDINATOR * r.scenario.coordinators,
            bottleneck(r),
        ]
        for sweep, r in results
    ]
    failover_result = results[-1][1]
    dip = failover_dip(failover_result)
    lost = failover_result.steps_lost + failover_result.workflows_stranded
    by_sweep: dict[str, list[Result]] = {}
    for sweep, r in results[:-1]:
        by_sweep.setdefault(sweep, []).append(r)
    coordinator_plot = plots.lines(
        out.plot("scaling-coordinators"),
        f"Simulated steps/s against coordinators (PostgreSQL {args.database_cores} cores)",
        {
            f"offered {rs[0].scenario.offered_steps_per_second:,.0f} steps/s": [
                (r.scenario.coordinators, r.steps_per_second) for r in rs
            ]
            for sweep, rs in by_sweep.items()
            if sweep.startswith("coordinators")
        },
        "coordinators (each owning 1/N of the shards)",
        "steps committed per second",
        log_x=True,
        log_y=True,
    )
    latency_plot = plots.lines(
        out.plot("scaling-latency"),
        "Simulated result → committed latency against offered load",
        {
            f"{sweep.split('@ ')[1]} p{q}": [
                (r.scenario.offered_steps_per_second, (r.latency_p50 if q == 50 else r.latency_p99) * 1000)
                for r in rs
                if r.steps_per_second >= 0.95 * r.scenario.offered_steps_per_second
            ]
            for sweep, rs in by_sweep.items()
            if sweep.startswith("load")
            for q in (50, 99)
        },
        "offered steps per second (runs that kept up)",
        "milliseconds",
        log_x=True,
        log_y=True,
    )
    failover_plot = plots.timelines(
        out.plot("scaling-failover"),
        f"One of {failover.coordinators} owners fails at {failover.failover_at:.0f} s; "
        f"a standby takes over after {failover.takeover_seconds:.0f} s",
        {"steps committed per second (0.5 s buckets)": failover_result.throughput_series},
        "steps per second",
        reference=(failover.offered_steps_per_second, "offered load"),
        events=[
            (failover.failover_at or 0.0, "owner stops"),
            ((failover.failover_at or 0.0) + failover.takeover_seconds, "standby takes over"),
        ],
    )
    summary = (
        f"Discrete-event simulation (`bench/scaling_sim.py`), cost model {_describe(cost)}; "
        f"{args.duration:.0f} simulated seconds per run, rates measured after {args.warmup:.0f} s; "
        f"PostgreSQL with {args.database_cores} cores; LLM latency uniform "
        f"{base.llm_latency[0]}-{base.llm_latency[1]} s with executor slots for twice the load; "
        f"1x = {args.today:,.0f} steps/s.\n\n"
        + report.table(headers, rows)
        + f"\nFailover: {failover.coordinators} coordinators at "
        f"{failover.offered_steps_per_second:,.0f} steps/s, owner {failover.failed_owner} stops at "
        f"{failover.failover_at:.0f} s, a standby serves after {failover.takeover_seconds:.0f} s: "
        f"baseline {dip['baseline_steps_per_second']:,.0f} steps/s, lowest "
        f"{dip['lowest_steps_per_second']:,.0f}, peak after the takeover "
        f"{dip['peak_steps_per_second_after_takeover']:,.0f}; "
        f"at most {dip['most_steps_behind']:,.0f} steps behind the baseline, back to it "
        f"{dip['seconds_until_back_to_baseline']:.1f} s after the failure; "
        f"{failover_result.workflows_started:,} workflows started, "
        f"{failover_result.workflows_completed:,} completed, "
        f"{failover_result.steps_lost} steps lost, {failover_result.workflows_stranded} workflows stranded, "
        f"{failover_result.duplicate_applies} applied twice.\n\n"
        f"![coordinators]({coordinator_plot.name})\n\n![latency]({latency_plot.name})\n\n"
        f"![failover]({failover_plot.name})\n"
    )
    out.write(
        info,
        report.options(args),
        {
            "cost_model": dataclasses.asdict(cost),
            "runs": [{"sweep": sweep, **r.as_json(), "bottleneck": bottleneck(r)} for sweep, r in results],
            "failover": {**dip, "steps_lost": lost},
        },
        summary,
    )
    console.print(summary)
    return 0 if lost == 0 and failover_result.duplicate_applies == 0 else 1


def _describe(cost: CostModel) -> str:
    return (
        f"coordinator {cost.coordinator_cpu_per_step * 1e3:.2f} ms per step + "
        f"{cost.coordinator_cpu_per_transaction * 1e3:.2f} ms per transaction, PostgreSQL "
        f"{cost.database_cpu_per_step * 1e3:.2f} ms + {cost.database_cpu_per_transaction * 1e3:.2f} ms, "
        f"{cost.wal_bytes_per_step:,.0f} WAL bytes per step, "
        f"WAL flush {cost.wal_flush_seconds * 1e3:.1f} ms, "
        "WAL bandwidth "
        f"{cost.wal_bandwidth / 1e6:,.0f} MB/s, {cost.round_trips_per_transaction:.0f} round trips of "
        f"{cost.round_trip_seconds * 1e3:.1f} ms per transaction"
    )
