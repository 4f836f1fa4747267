"""Reporting results: buffered, batched, and kept until the coordinator has them.

A finished task's result waits here until a ``RecordResults`` call that carries
it succeeds. Batches go out when ``max_batch`` results are waiting or
``flush_interval`` after the first one arrived. If the coordinator is unreachable
the batch is retried with backoff, however long it takes: the coordinator keeps
the task leased to this executor (while it heartbeats), so nothing else will run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc

from conveyor.backoff import Backoff, BackoffPolicy
from conveyor.v1 import common_pb2
from conveyor.v1 import executor_service_pb2 as pb
from conveyor.v1.executor_service_pb2_grpc import ExecutorServiceStub

log = logging.getLogger(__name__)

REPORT_TIMEOUT = 30.0
#: Between tries of a report the coordinator did not take (unreachable, restarting).
REPORT_BACKOFF = BackoffPolicy(initial=0.1, maximum=5.0)
#: Statuses that refuse the request itself: sending it again unchanged fails the same way.
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


class ResultReporter:
    def __init__(
        self,
        executor_id: str,
        *,
        max_batch: int = 50,
        max_batch_bytes: int = 32 * 1024 * 1024,
        flush_interval: float = 0.02,
    ) -> None:
        self._executor_id = executor_id
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self._flush_interval = flush_interval
        self._pending: list[pb.TaskResult] = []
        #: The batch being sent right now: still held (listed in a reconnect's Hello).
        self._in_flight: list[pb.TaskResult] = []
        #: The token of the latest delivery of a task whose result is held here (the task
        #: was re-claimed for this executor after its lease expired), by task id. Tokens
        #: are random, not increasing: the latest delivery's is the current one.
        self._adopted_tokens: dict[int, int] = {}
        #: Held results of cancelled attempts: a newer delivery of their task runs anew.
        self._not_adoptable: set[int] = set()
        self._arrived = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self.reported = 0
        self.rejected_stale = 0
        self.refused = 0
        #: After a refused batch: how many results to send one per call, to isolate the refused.
        self._singles = 0

    def add(self, result: pb.TaskResult, *, adoptable: bool = True) -> None:
        """Hold ``result`` until reported; ``adoptable=False`` (a cancelled attempt's) keeps its token."""
        if not adoptable:
            self._not_adoptable.add(result.task_id)
        else:
            self._not_adoptable.discard(result.task_id)
        self._pending.append(result)
        self._drained.clear()
        self._arrived.set()
        if len(self._pending) >= self.max_batch:
            self._batch_full.set()

    def pending_task_ids(self) -> list[int]:
        """Tasks whose results are held: waiting, or in a RecordResults call right now."""
        return [result.task_id for result in (*self._in_flight, *self._pending)]

    def adopt(self, task_id: int, fencing_token: int) -> bool:
        """The task came again with a newer token: report its held result with that one.

        Returns whether a held result for ``task_id`` stands for the new delivery (then the
        task must not run again). A result already on its way with the older token and
        answered STALE is sent again with the newer one.

        Only a success is adopted. A held failure does not finish the step, so the new
        delivery may be the retry it caused: the coordinator accepted the failure and
        re-claimed the task for this executor before the RecordResults answer came back.
        Adopted, that retry would never run, and its step would wait for its deadline.
        Not adopted, the new attempt runs and the failure is reported with its own token
        (accepted if it came first, answered STALE otherwise).
        """
        held = [r for r in (*self._in_flight, *self._pending) if r.task_id == task_id]
        if not held or task_id in self._not_adoptable or any(r.HasField("failure") for r in held):
            return False
        self._adopted_tokens[task_id] = fencing_token
        for result in self._pending:
            if result.task_id == task_id:
                result.fencing_token = fencing_token
        return True

    async def wait_drained(self) -> None:
        """Until every result added so far has been reported."""
        await self._drained.wait()

    async def run(
        self,
        stub: ExecutorServiceStub | Callable[[], ExecutorServiceStub],
        on_failure: Callable[[grpc.aio.AioRpcError], object] | None = None,
    ) -> None:
        """Report until cancelled. ``stub``: the stub, or a function giving the current one (the
        leader's, with standby coordinators); ``on_failure`` sees every failed call (to follow
        the leader) before it is retried."""
        # Jittered: after a coordinator restart the executors' reports do not arrive in waves.
        backoff = Backoff(REPORT_BACKOFF)
        current = stub if callable(stub) else lambda: stub
        while True:
            if not self._pending:
                self._drained.set()
                self._arrived.clear()
                await self._arrived.wait()
            if len(self._pending) < self.max_batch:
                self._batch_full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_interval):
                        await self._batch_full.wait()
            batch = self._take_batch()
            self._in_flight = batch
            try:
                response = await current().RecordResults(
                    pb.RecordResultsRequest(executor_id=self._executor_id, results=batch),
                    timeout=REPORT_TIMEOUT,
                )
            except grpc.aio.AioRpcError as error:
                self._in_flight = []
                if on_failure is not None:
                    on_failure(error)
                if error.code() in REFUSALS:
                    if len(batch) > 1:
                        # Refused as a whole (too big a message, one bad result): send them
                        # one by one, so that only what is refused on its own is given up.
                        self._singles = max(self._singles, len(batch))
                        self._pending[:0] = batch
                        continue
                    reason = f"{error.code().name}: {error.details() or 'no reason given'}"
                    self._pending[:0] = _as_failures(batch, reason)
                    continue
                self._pending[:0] = batch
                delay = backoff.next_delay() or 0.0
                log.warning(
                    "reporting %d result(s) failed (%s: %s); retrying in %.2fs",
                    len(batch),
                    error.code().name,
                    error.details(),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            finally:
                self._in_flight = []
            backoff.reset()
            self._settle(batch, response)

    def _settle(self, batch: list[pb.TaskResult], response: pb.RecordResultsResponse) -> None:
        """Act on each result's disposition: forget it, or send it again in a form that can be applied."""
        dispositions = list(response.dispositions)
        reasons = list(response.reasons)
        again: list[pb.TaskResult] = []
        stale = 0
        for index, result in enumerate(batch):
            disposition = dispositions[index] if index < len(dispositions) else pb.RESULT_DISPOSITION_ACCEPTED
            adopted = self._adopted_tokens.get(result.task_id)
            if disposition == pb.RESULT_DISPOSITION_STALE and adopted not in (None, result.fencing_token):
                # Re-claimed for this executor while the result was on its way: the newer token is ours.
                result.fencing_token = adopted
                again.append(result)
                continue
            self._adopted_tokens.pop(result.task_id, None)
            self._not_adoptable.discard(result.task_id)
            if disposition == pb.RESULT_DISPOSITION_REFUSED:
                # Never re-sent as it was: a refused success becomes a failure naming the
                # reason, a refused failure is dropped (its lease expiring retries the task).
                self.refused += 1
                reason = reasons[index] if index < len(reasons) else ""
                again.extend(_as_failures([result], reason or "no reason given"))
                continue
            self.reported += 1
            if disposition == pb.RESULT_DISPOSITION_STALE:
                stale += 1
        if again:
            self._pending[:0] = again
            self._arrived.set()
        if stale:
            self.rejected_stale += stale
            log.warning(
                "coordinator rejected %d stale result(s): their leases had expired and the tasks were "
                "handed to another executor",
                stale,
            )

    def _take_batch(self) -> list[pb.TaskResult]:
        size = 0
        count = 0
        limit = self.max_batch
        if self._singles:
            self._singles -= 1
            limit = 1
        for result in self._pending[:limit]:
            size += result.ByteSize()
            if count and size > self.max_batch_bytes:
                break
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        for result in batch:  # a token adopted while the result waited for a retry
            result.fencing_token = self._adopted_tokens.get(result.task_id, result.fencing_token)
        return batch


def _as_failures(batch: list[pb.TaskResult], reason: str) -> list[pb.TaskResult]:
    """Replace a batch the coordinator refused with failures it will accept.

    Refused results would otherwise be retried forever while their tasks stay
    leased to this (live) executor. Failures that were refused are dropped.
    """
    if all(result.HasField("failure") for result in batch):
        log.error("coordinator refused a batch of failures (%s); dropping %d result(s)", reason, len(batch))
        return []
    log.error("coordinator refused a result batch (%s); reporting its tasks as failed", reason)
    return [
        pb.TaskResult(
            task_id=result.task_id,
            fencing_token=result.fencing_token,
            failure=pb.TaskFailure(
                error_class=common_pb2.ERROR_CLASS_NON_RETRYABLE,
                message=f"the coordinator refused this task's result: {reason}"[:2000],
            ),
            started_at=result.started_at,
            finished_at=result.finished_at,
        )
        for result in batch
    ]
