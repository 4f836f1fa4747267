"""An executor's Prometheus metrics (``conveyor executor --metrics-port``).

What only the executor sees: how long each attempt really ran (the coordinator's
histogram includes delivery and batching), how attempts ended (a 429 shows as
``outcome="rate_limited"``), how many slots are busy, and what happened to the
results it reported. Labels: task kind and outcome only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .results import ResultReporter

#: Seconds: from a handler's milliseconds to an LLM call's minutes.
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ExecutorMetrics:
    """Every metric of one executor, on a registry of its own."""

    def __init__(
        self,
        capacity: int,
        running: Callable[[], int],
        draining: Callable[[], bool],
        reporter: ResultReporter,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_ReporterCollector(reporter))
        self.task_seconds = Histogram(
            "conveyor_executor_task_seconds",
            "How long attempts ran here, by task kind and outcome (success, retryable, non_retryable, "
            "rate_limited: a 429 or TaskRateLimited)",
            ["task_kind", "outcome"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        slots = Gauge(
            "conveyor_executor_slots",
            "Task slots: capacity (--concurrency), and in use (tasks running)",
            ["use"],
            registry=self.registry,
        )
        slots.labels("capacity").set(capacity)
        slots.labels("in_use").set_function(lambda: float(running()))
        Gauge(
            "conveyor_executor_draining",
            "1 once the executor stopped taking tasks (SIGTERM or an epoch bump), else 0",
            registry=self.registry,
        ).set_function(lambda: float(draining()))

    def ran(self, task_kind: str, outcome: str, seconds: float) -> None:
        self.task_seconds.labels(task_kind, outcome).observe(seconds)


class _ReporterCollector(Collector):
    def __init__(self, reporter: ResultReporter) -> None:
        self._reporter = reporter

    def collect(self) -> Iterator[Metric]:
        reported = CounterMetricFamily(
            "conveyor_executor_results_reported", "Results delivered to the coordinator (stale ones included)"
        )
        reported.add_metric([], self._reporter.reported)
        yield reported
        stale = CounterMetricFamily(
            "conveyor_executor_results_rejected_stale",
            "Results the coordinator rejected: the task's lease had expired and it went elsewhere",
        )
        stale.add_metric([], self._reporter.rejected_stale)
        yield stale
