"""The coordinator's Prometheus metrics (``conveyor coordinator --metrics-port``).

Three sources, each updated where its facts arise, never by scanning hot tables
per scrape:

* **events**: the engine reports each claim batch, result batch and replay batch
  as it happens (:meth:`CoordinatorMetrics.claimed`, :meth:`recorded`,
  :meth:`replayed`): attempts by outcome, retries by class, and the latency
  histograms of a step's life (queue wait, claim to result, transition gap);
* **counters** the engine keeps anyway (:class:`~conveyor.coordinator.reports.CoordinatorStats`),
  read at scrape time;
* **gauges** of state (queue depth and oldest age per shard, the replay queue,
  workflows by status, executors and their slots), set from one aggregate query
  every few seconds by :meth:`refresh`.

Labels stay few: shard (bounded by the shard count), task kind (bounded by the
handler kinds), status and class enums. Never workflow or executor ids.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from .reports import CoordinatorStats, DiagnoseReport
    from .store import ClaimedTask, RecordOutcome, ReplayBatchOutcome

log = logging.getLogger(__name__)

#: Seconds, for waits that range from an idle queue's milliseconds to a backlog's minutes.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Seconds, for the coordinator's own reaction times.
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

#: How an accepted attempt ended, as the ``outcome`` label.
SUCCESS = "success"


class CoordinatorMetrics:
    """Every metric of one coordinator, on a registry of its own (tests run several per process)."""

    def __init__(self, stats: CoordinatorStats) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StatsCollector(stats))
        registry = self.registry
        self.attempts = Counter(
            "conveyor_task_attempts",
            "Attempts whose result was accepted, by task kind and outcome "
            "(success, retryable, non_retryable, rate_limited: a 429)",
            ["task_kind", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "conveyor_task_retries",
            "Failed attempts the queue will retry, by the class of the failure",
            ["error_class"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "conveyor_step_queue_wait_seconds",
            "From a task becoming claimable (enqueued, or its backoff over) to an executor claiming it",
            ["task_kind"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.execution = Histogram(
            "conveyor_step_execution_seconds",
            "From a claim to the coordinator recording its result: the attempt's run time plus "
            "delivery and result batching (executors export the bare run time)",
            ["task_kind"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.transition_gap = Histogram(
            "conveyor_step_transition_gap_seconds",
            "From a workflow's last running step finishing (or its start) to its replay starting the "
            "next steps: the engine's own latency between steps",
            buckets=GAP_BUCKETS,
            registry=registry,
        )
        self.queued = Gauge(
            "conveyor_queue_tasks",
            "Tasks in the queue by shard and state (queued: claimable now; delayed: waiting out a "
            "retry backoff; claimed: held by an executor)",
            ["shard", "state"],
            registry=registry,
        )
        self.oldest_age = Gauge(
            "conveyor_queue_oldest_age_seconds",
            "Age of the workflow of each shard's oldest claimable task (0 when none is queued)",
            ["shard"],
            registry=registry,
        )
        self.replay_depth = Gauge(
            "conveyor_replay_queue_depth", "Workflows waiting for a replay", registry=registry
        )
        self.workflows = Gauge(
            "conveyor_workflows", "Workflows in the database by status", ["status"], registry=registry
        )
        self.executors = Gauge(
            "conveyor_executors",
            "Executor sessions by state (live, draining, disconnected)",
            ["state"],
            registry=registry,
        )
        self.slots = Gauge(
            "conveyor_executor_slots",
            "Task slots of connected executors: capacity, and in use (tasks claimed)",
            ["use"],
            registry=registry,
        )
        self.epoch = Gauge("conveyor_epoch", "The current executor epoch", registry=registry)
        #: Labelled children already looked up (see `_child`).
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.refreshed_at = Gauge(
            "conveyor_gauges_refreshed_timestamp_seconds",
            "When the state gauges were last refreshed from the database",
            registry=registry,
        )

    # ------------------------------------------------------------------ events

    def claimed(self, tasks: Sequence[ClaimedTask], claimed_at: int) -> None:
        waits: dict[str, list[float]] = {}
        for task in tasks:
            waits.setdefault(task.kind, []).append(max(0, claimed_at - task.available_at) / 1e6)
        for kind, values in waits.items():
            _observe_all(self._child(self.queue_wait, kind), values)

    def recorded(self, outcome: RecordOutcome) -> None:
        ended: collections.Counter[tuple[str, str]] = collections.Counter()
        retried: collections.Counter[str] = collections.Counter()
        runs: dict[str, list[float]] = {}
        for attempt in outcome.attempts:
            outcome_label = SUCCESS if attempt.error_class is None else attempt.error_class.value
            ended[attempt.task_kind, outcome_label] += 1
            if attempt.claimed_for is not None:
                runs.setdefault(attempt.task_kind, []).append(attempt.claimed_for)
            if attempt.retried and attempt.error_class is not None:
                retried[attempt.error_class.value] += 1
        for labels, count in ended.items():
            self._child(self.attempts, *labels).inc(count)
        for kind, values in runs.items():
            _observe_all(self._child(self.execution, kind), values)
        for error_class, count in retried.items():
            self._child(self.retries, error_class).inc(count)

    def replayed(self, outcome: ReplayBatchOutcome) -> None:
        _observe_all(self.transition_gap, outcome.replay_delays)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: ``labels()`` checks and locks on every call, and the
        engine reports every claim and result."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # ------------------------------------------------------------------ gauges

    def refresh(self, report: DiagnoseReport) -> None:
        """Set the state gauges from a Diagnose report (taken without its invariant checks)."""
        for depth in report.shards:
            shard = str(depth.shard)
            self.queued.labels(shard, "queued").set(depth.queued)
            self.queued.labels(shard, "delayed").set(depth.delayed)
            self.queued.labels(shard, "claimed").set(depth.claimed)
            oldest = depth.oldest_queued_created_at
            self.oldest_age.labels(shard).set(0 if oldest is None else (report.generated_at - oldest) / 1e6)
        self.replay_depth.set(report.replay_queue_depth)
        for status in ("running", "completed", "failed", "cancelled"):
            self.workflows.labels(status).set(report.workflows_by_status.get(status, 0))
        states = {"live": 0, "draining": 0, "disconnected": 0}
        capacity = in_use = 0
        for view in report.executors:
            state = view.session.state.value
            states[state] = states.get(state, 0) + 1
            if state != "disconnected":
                capacity += view.session.capacity
            in_use += view.claimed_tasks
        for state, count in states.items():
            self.executors.labels(state).set(count)
        self.slots.labels("capacity").set(capacity)
        self.slots.labels("in_use").set(in_use)
        self.epoch.set(report.epoch)
        self.refreshed_at.set(report.generated_at / 1e6)


def _observe_all(histogram: Any, values: Sequence[float]) -> None:
    """Observe ``values`` on a histogram (or labelled child) with one increment per bucket touched.

    ``observe`` takes two locks per value; a claim of 200 tasks paid that 200 times. This writes
    what ``observe`` would (each value counted in the first bucket whose bound holds it, and in the
    sum) through the histogram's own bucket values, and falls back to ``observe`` should a
    prometheus_client release store them differently.
    """
    if not values:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    for index, count in collections.Counter(bisect.bisect_left(bounds, value) for value in values).items():
        buckets[index].inc(count)
    total.inc(sum(values))


class _StatsCollector(Collector):
    """The engine's running counters, read when scraped."""

    def __init__(self, stats: CoordinatorStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield _counter("conveyor_workflows_started", "Workflows started", [((), stats.workflows_started)])
        yield _counter(
            "conveyor_workflows_finished",
            "Workflows that reached a terminal status, by status",
            [((status,), count) for status, count in sorted(stats.workflows_finished.items())],
            ["status"],
        )
        yield _counter(
            "conveyor_results",
            "Task results executors reported, by disposition (accepted; duplicate: applied before; "
            "stale: rejected because the lease or fencing token was no longer current)",
            [
                (("accepted",), stats.results_accepted),
                (("duplicate",), stats.results_duplicate),
                (("stale",), stats.results_stale),
            ],
            ["disposition"],
        )
        yield _counter("conveyor_tasks_claimed", "Tasks handed to executors", [((), stats.tasks_claimed)])
        yield _counter("conveyor_replays", "Workflow replays run", [((), stats.replays)])
        cache = stats.workflow_cache
        yield _counter(
            "conveyor_workflow_cache_lookups",
            "Workflow cache lookups when a workflow advances, by result (hit: its suspended code ran on; "
            "miss: it was replayed from its journal)",
            [(("hit",), cache.hits), (("miss",), cache.misses)],
            ["result"],
        )
        yield _counter(
            "conveyor_workflow_cache_evictions",
            "Suspended workflow runs dropped from the cache (LRU, bounds, refused writes, finished)",
            [((), cache.evictions)],
        )
        yield _gauge("conveyor_workflow_cache_entries", "Suspended workflow runs in the cache", cache.entries)
        yield _gauge(
            "conveyor_workflow_cache_bytes", "Estimated memory of the suspended workflow runs", cache.bytes
        )
        yield _counter(
            "conveyor_leases_expired",
            "Executors that lost their lease (no heartbeat for the lease TTL)",
            [((), stats.leases_expired)],
        )
        yield _counter(
            "conveyor_workflows_purged",
            "Finished workflows purged with their journals (--retention and PurgeWorkflows)",
            [((), stats.workflows_purged)],
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _counter(
    name: str,
    documentation: str,
    samples: Iterable[tuple[tuple[str, ...], float]],
    labels: Sequence[str] = (),
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


async def refresh_gauges(
    metrics: CoordinatorMetrics, report: Callable[[], Awaitable[DiagnoseReport]], interval: float
) -> None:
    """Set the state gauges from a fresh report every ``interval`` seconds, until cancelled."""
    while True:
        try:
            metrics.refresh(await report())
        except ConveyorError as error:  # e.g. the database is down: keep the last values
            log.warning("could not refresh the queue gauges: %s", error)
        await asyncio.sleep(interval)
