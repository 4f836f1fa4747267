"""What happened in a run, read back from the coordinator's database, and its statistics.

Every timestamp the coordinator stores is wall-clock microseconds, so a run can be
reconstructed exactly after the fact, without polling during it:

* a workflow's ``created_at`` is its start (and its FIFO key), ``completed_at`` its finish;
* a step's ``created_at`` is when its task was enqueued, ``started_at`` when the executor
  began the call (reported by the executor, same machine clock), ``completed_at`` when
  its result was recorded.

So per step: *queue wait* = started - enqueued, *execution* = completed - started; and
between steps: *transition gap* = a step's start - the recording of the last result it
waited for (replay, claim and delivery to the executor).
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from conveyor.coordinator.store.schema import steps, workflows

US = 1_000_000


@dataclass(frozen=True)
class WorkflowTiming:
    created_at: float  # seconds since the first workflow started
    completed_at: float | None
    status: str


@dataclass(frozen=True)
class StepTiming:
    number: int
    name: str
    enqueued_at: float
    started_at: float | None
    completed_at: float | None
    attempt: int
    executor_id: str | None


@dataclass
class RunTimings:
    """Workflows in start order, and each one's steps in journal order."""

    workflows: list[WorkflowTiming]
    steps: list[list[StepTiming]]
    #: Wall-clock seconds (Unix time) of the first workflow's start: the zero of every time above.
    origin: float


def load(database_url: str, name: str = "research") -> RunTimings:
    """Read every ``name`` workflow and its steps from the database."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(
                    workflows.c.id, workflows.c.created_at, workflows.c.completed_at, workflows.c.status
                )
                .where(workflows.c.name == name)
                .order_by(workflows.c.created_at)
            ).all()
            step_rows = connection.execute(
                sa.select(
                    steps.c.workflow_id,
                    steps.c.number,
                    steps.c.name,
                    steps.c.created_at,
                    steps.c.started_at,
                    steps.c.completed_at,
                    steps.c.attempt,
                    steps.c.executor_id,
                )
                .join(workflows, workflows.c.id == steps.c.workflow_id)
                .where(workflows.c.name == name)
            ).all()
    finally:
        engine.dispose()
    if not rows:
        return RunTimings([], [], 0.0)
    origin = rows[0].created_at

    def seconds(us: int | None) -> float | None:
        return None if us is None else (us - origin) / US

    index = {row.id: position for position, row in enumerate(rows)}
    journal: list[list[StepTiming]] = [[] for _ in rows]
    for row in step_rows:
        journal[index[row.workflow_id]].append(
            StepTiming(
                row.number,
                row.name,
                (row.created_at - origin) / US,
                seconds(row.started_at),
                seconds(row.completed_at),
                row.attempt,
                row.executor_id,
            )
        )
    for entries in journal:
        entries.sort(key=lambda step: step.number)
    return RunTimings(
        [
            WorkflowTiming((row.created_at - origin) / US, seconds(row.completed_at), row.status)
            for row in rows
        ],
        journal,
        origin / US,
    )


# ------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values, default=math.nan),
    }


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two sequences, in O(n log n); ties in ``y`` are allowed.

    1 means ``y`` orders the items exactly as ``x`` does, 0 no relation, -1 reversed.
    Here x is the start order (no ties) and y the completion time (ties: workflows
    finished by one replay transaction share its timestamp).
    """
    n = len(x)
    if n < 2:
        return math.nan
    ys = [value for _, value in sorted(zip(x, y, strict=True))]
    pairs = n * (n - 1) // 2
    tied_y = sum(count * (count - 1) // 2 for count in _counts(ys).values())
    discordant = _count_inversions(ys)
    concordant = pairs - discordant - tied_y
    denominator = math.sqrt(pairs * (pairs - tied_y))
    return (concordant - discordant) / denominator if denominator else math.nan


def _counts(values: Sequence[float]) -> dict[float, int]:
    counts: dict[float, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    return counts


def _count_inversions(values: list[float]) -> int:
    """Pairs i < j with values[i] > values[j] (strictly), by merge sort."""
    inversions = 0
    width = 1
    items = list(values)
    while width < len(items):
        merged: list[float] = []
        for start in range(0, len(items), 2 * width):
            left = items[start : start + width]
            right = items[start + width : start + 2 * width]
            i = j = 0
            while i < len(left) and j < len(right):
                if right[j] < left[i]:
                    inversions += len(left) - i
                    merged.append(right[j])
                    j += 1
                else:
                    merged.append(left[i])
                    i += 1
            merged.extend(left[i:])
            merged.extend(right[j:])
        items = merged
        width *= 2
    return inversions


def waves(journal: Sequence[StepTiming]) -> list[list[StepTiming]]:
    """Steps grouped by the moment they were enqueued: steps started together form a wave."""
    groups: dict[float, list[StepTiming]] = defaultdict(list)
    for step in journal:
        groups[step.enqueued_at].append(step)
    return [groups[key] for key in sorted(groups)]


@dataclass
class TransitionGaps:
    """Between a wave's last recorded result and the next wave of the same workflow."""

    #: ... its first step enqueued: replay and the start-steps transaction (the engine alone).
    to_enqueue: list[float]
    #: ... its first step started on an executor: the above plus the wait for a free slot,
    #: the claim, and the delivery down the executor's stream.
    to_start: list[float]


def transition_gaps(timings: RunTimings) -> TransitionGaps:
    gaps = TransitionGaps([], [])
    for journal in timings.steps:
        previous_done: float | None = None
        for wave in waves(journal):
            starts = [s.started_at for s in wave if s.started_at is not None]
            if previous_done is not None:
                gaps.to_enqueue.append(wave[0].enqueued_at - previous_done)
                if starts:
                    gaps.to_start.append(min(starts) - previous_done)
            finished = [s.completed_at for s in wave if s.completed_at is not None]
            previous_done = max(finished) if len(finished) == len(wave) else None
    return gaps


def sustained_rate(
    completions: Sequence[float], events_per_item: int, low: float = 0.1, high: float = 0.9
) -> float:
    """Items finished per second between the ``low`` and ``high`` quantiles of finishing,
    times ``events_per_item``: the steady rate, without the ramp-up and the tail."""
    ordered = sorted(completions)
    if len(ordered) < 10:
        return math.nan
    first = ordered[int(low * (len(ordered) - 1))]
    last = ordered[int(high * (len(ordered) - 1))]
    count = int(high * (len(ordered) - 1)) - int(low * (len(ordered) - 1))
    return count * events_per_item / (last - first) if last > first else math.nan


def sustained_rate_from_progress(
    progress: Sequence[tuple[float, int]],
    total: int,
    events_per_item: int,
    low: float = 0.1,
    high: float = 0.9,
) -> tuple[float, float, float]:
    """:func:`sustained_rate` from a sampled series of (time, items finished): the times the
    ``low`` and ``high`` shares of ``total`` were reached (interpolated between samples) and
    the rate between them. For runs whose items leave no trace (retention purges them)."""

    def reached(share: float) -> float:
        target = share * total
        previous = (0.0, 0)
        for sample in progress:
            if sample[1] >= target:
                (t0, n0), (t1, n1) = previous, sample
                return t1 if n1 == n0 else t0 + (t1 - t0) * (target - n0) / (n1 - n0)
            previous = sample
        return math.nan

    first, last = reached(low), reached(high)
    rate = (high - low) * total * events_per_item / (last - first) if last > first else math.nan
    return first, last, rate


def deciles(timings: RunTimings) -> list[dict[str, float]]:
    """Per tenth of the workflows in start order: when they started and finished (s from the first start)."""
    items = timings.workflows
    size = len(items) / 10
    table = []
    for decile in range(10):
        group = items[round(decile * size) : round((decile + 1) * size)]
        done = [w.completed_at for w in group if w.completed_at is not None]
        durations = [w.completed_at - w.created_at for w in group if w.completed_at is not None]
        if not group:
            continue
        table.append(
            {
                "decile": decile + 1,
                "workflows": len(group),
                "started_from": group[0].created_at,
                "started_to": group[-1].created_at,
                "completion_median": statistics.median(done) if done else math.nan,
                "completion_p90": percentile(done, 90),
                "duration_median": statistics.median(durations) if durations else math.nan,
            }
        )
    return table


def slot_bound(timings: RunTimings, slots: int) -> dict[str, float]:
    """The shortest span any scheduler could achieve with ``slots`` slots, and its two parts.

    * work bound: all measured execution seconds packed perfectly into the slots;
    * path bound: the latest (start offset + critical path) of any workflow, the critical
      path being its waves run back to back with no waiting (each wave as long as its
      longest step), which is what "respecting the sequential waves" costs.

    The bound is the larger of the two; a real run adds queueing at the tail.
    """
    work = 0.0
    path = 0.0
    for workflow, journal in zip(timings.workflows, timings.steps, strict=True):
        critical = 0.0
        for wave in waves(journal):
            durations = _executions(wave)
            work += sum(durations)
            critical += max(durations, default=0.0)
        path = max(path, workflow.created_at + critical)
    return {"work_bound": work / slots, "path_bound": path, "bound": max(work / slots, path)}


def ideal_span(timings: RunTimings, slots: int, *, fifo: bool, pinned: bool = False) -> float:
    """The span a zero-overhead scheduler would reach with these very step durations.

    It replays the run's measured execution times through ``slots`` slots that free
    and refill instantly, each wave enqueued the moment the previous one finished,
    taking queued steps oldest workflow first (``fifo``) or oldest step first, every
    workflow available from the start. With ``pinned`` each workflow may only use the
    slots of the executor that ran its first step (as shard leases pin it), the slots
    split evenly between executors; otherwise all slots form one pool. The difference
    from the measured span is what the engine itself cost; the difference from
    :func:`slot_bound` is what the claim order (and the pinning) costs.
    """
    pools: dict[str | None, list[int]] = defaultdict(list)
    for workflow, journal in enumerate(timings.steps):
        pools[journal[0].executor_id if pinned and journal else None].append(workflow)
    return max(
        (_ideal_pool_span(timings, members, slots // len(pools), fifo=fifo) for members in pools.values()),
        default=0.0,
    )


def _ideal_pool_span(timings: RunTimings, members: list[int], slots: int, *, fifo: bool) -> float:
    durations = {w: [_executions(wave) for wave in waves(timings.steps[w])] for w in members}
    queue: list[tuple[tuple[int, ...], int, int, float]] = []  # (order key, workflow, wave, duration)
    sequence = 0

    def enqueue(workflow: int, wave: int) -> None:
        nonlocal sequence
        for duration in durations[workflow][wave]:
            sequence += 1
            key = (workflow, sequence) if fifo else (sequence,)
            heapq.heappush(queue, (key, workflow, wave, duration))

    left_in_wave: dict[int, int] = {}
    for workflow in members:
        if durations[workflow]:
            left_in_wave[workflow] = len(durations[workflow][0])
            enqueue(workflow, 0)
    running: list[tuple[float, int, int]] = []  # (finish time, workflow, wave)
    now = span = 0.0
    while queue or running:
        while queue and len(running) < slots:
            _key, workflow, wave, duration = heapq.heappop(queue)
            heapq.heappush(running, (now + duration, workflow, wave))
        now, workflow, wave = heapq.heappop(running)
        left_in_wave[workflow] -= 1
        if left_in_wave[workflow] == 0:
            if wave + 1 < len(durations[workflow]):
                left_in_wave[workflow] = len(durations[workflow][wave + 1])
                enqueue(workflow, wave + 1)
            else:
                span = max(span, now)
    return span


def _executions(wave: Sequence[StepTiming]) -> list[float]:
    return [
        s.completed_at - s.started_at for s in wave if s.started_at is not None and s.completed_at is not None
    ]


def step_phases(timings: RunTimings) -> dict[str, dict[str, dict[str, float]]]:
    """Queue wait and execution per step name: {name: {"queue_wait": summary, "execution": summary}}."""
    waits: dict[str, list[float]] = defaultdict(list)
    runs: dict[str, list[float]] = defaultdict(list)
    for journal in timings.steps:
        for step in journal:
            if step.started_at is None or step.completed_at is None:
                continue
            waits[step.name].append(step.started_at - step.enqueued_at)
            runs[step.name].append(step.completed_at - step.started_at)
    return {name: {"queue_wait": summary(waits[name]), "execution": summary(runs[name])} for name in waits}


def as_json(value: Any) -> Any:
    """NaN becomes None, so the JSON stays standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    return value
