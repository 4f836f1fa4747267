"""The chaos workload: research workflows with unique topics, followed to the end through faults.

Progress is counted over every research workflow of the database: the ones
started before this workload must be among the finished before any of its own
count (so successive workloads are followed correctly, never declared done early).

Topics are unique so that every LLM request body is unique, which lets the
simulator's ``duplicate_successes`` count exactly the LLM calls that were made
twice. Starts carry idempotency keys, so a start retried across a coordinator
restart cannot start a workflow twice.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from conveyor.backoff import Backoff, BackoffPolicy
from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from conveyor.errors import DeadlineExceeded, Unavailable

from ..workflows import research

T = TypeVar("T")

WORKFLOW = research.__name__
#: Workflows per StartWorkflows call.
START_BATCH = 500
#: How long a call is retried while the coordinator (or its database) is away.
OUTAGE_TOLERANCE = 120.0
#: Between calls to a coordinator that did not answer (restarting, or its database down).
RETRY_BACKOFF = BackoffPolicy(initial=0.1, maximum=1.0, jitter=0.5)

Counts = dict[WorkflowStatus, int]


class WorkloadTimeout(AssertionError):
    """The workflows did not get where a scenario waited for them to get."""


async def retrying(call: Callable[[], Awaitable[T]], *, tolerance: float = OUTAGE_TOLERANCE) -> T:
    """``call()`` until the coordinator answers; it may be restarting, or its database may be."""
    backoff = Backoff(RETRY_BACKOFF, deadline=tolerance)
    while True:
        try:
            return await call()
        except (Unavailable, DeadlineExceeded):
            delay = backoff.next_delay()
            if delay is None:
                raise
            await asyncio.sleep(delay)


class Workload:
    def __init__(self, count: int, label: str) -> None:
        self.count = count
        self.label = label
        self.topics = [f"{label} topic {index}" for index in range(count)]
        #: Research workflows started before this workload.
        self.earlier = 0

    async def start(self, client: AsyncClient) -> None:
        """Start every workflow, in FIFO order."""
        self.earlier = sum((await self.counts(client)).values())
        for first in range(0, self.count, START_BATCH):
            batch = [
                (WORKFLOW, {"topic": topic}, f"{self.label}-{index}")
                for index, topic in enumerate(self.topics[first : first + START_BATCH], start=first)
            ]
            await retrying(functools.partial(client.start_workflows, batch))

    async def counts(self, client: AsyncClient) -> Counts:
        return await retrying(lambda: client.count_workflows(WORKFLOW))

    async def wait_until_finished(
        self,
        client: AsyncClient,
        at_least: int | None = None,
        *,
        timeout: float,
    ) -> Counts:
        """Until ``at_least`` of its workflows (default: all) have finished; fails after ``timeout`` s."""
        target = self.earlier + (self.count if at_least is None else at_least)
        deadline = time.monotonic() + timeout
        while True:
            counts = await self.counts(client)
            finished = sum(n for status, n in counts.items() if status.finished)
            if finished >= target:
                return counts
            if time.monotonic() > deadline:
                raise WorkloadTimeout(
                    f"{finished - self.earlier} of {self.count} workflows finished after {timeout:.0f}s; "
                    f"waited for {target - self.earlier} ({dict(counts)}, {self.earlier} started earlier)"
                )
            await asyncio.sleep(0.1)
