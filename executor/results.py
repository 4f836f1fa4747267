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

import grpc

from conveyor.v1 import common_pb2
from conveyor.v1 import executor_service_pb2 as pb
from conveyor.v1.executor_service_pb2_grpc import ExecutorServiceStub

log = logging.getLogger(__name__)

REPORT_TIMEOUT = 30.0


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
        self._arrived = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self.reported = 0
        self.rejected_stale = 0

    def add(self, result: pb.TaskResult) -> None:
        self._pending.append(result)
        self._drained.clear()
        self._arrived.set()
        if len(self._pending) >= self.max_batch:
            self._batch_full.set()

    def pending_task_ids(self) -> list[int]:
        return [result.task_id for result in self._pending]

    async def wait_drained(self) -> None:
        """Until every result added so far has been reported."""
        await self._drained.wait()

    async def run(self, stub: ExecutorServiceStub) -> None:
        backoff = 0.1
        while True:
            if not self._pending:
                self._drained.set()
                self._arrived.clear()
                await self._arrived.wait()
            if len(self._pending) < self.max_batch:
                self._batch_full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._batch_full.wait(), self._flush_interval)
            batch = self._take_batch()
            try:
                response = await stub.RecordResults(
                    pb.RecordResultsRequest(executor_id=self._executor_id, results=batch),
                    timeout=REPORT_TIMEOUT,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    self._pending[:0] = _as_failures(batch, error.details() or "")
                    continue
                self._pending[:0] = batch
                log.warning(
                    "reporting %d result(s) failed (%s: %s); retrying in %.1fs",
                    len(batch),
                    error.code().name,
                    error.details(),
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self.reported += len(batch)
            stale = sum(1 for d in response.dispositions if d == pb.RESULT_DISPOSITION_STALE)
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
        for result in self._pending[: self.max_batch]:
            size += result.ByteSize()
            if count and size > self.max_batch_bytes:
                break
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
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
