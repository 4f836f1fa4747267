"""ExecutorService: the task stream and result batches of executors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

import grpc

from conveyor.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from conveyor.v1 import executor_service_pb2 as pb
from conveyor.v1 import executor_service_pb2_grpc

from .. import protocol, validation
from ..auth import TokenTable, require_executor_identity
from ..engine import Coordinator
from ..model import ErrorClass
from ..sessions import ExecutorSession
from ..store import Disposition, ReportedResult
from .errors import rpc

log = logging.getLogger(__name__)

MAX_ERROR_MESSAGE = 4000

_DISPOSITION_TO_WIRE = {
    Disposition.ACCEPTED: pb.RESULT_DISPOSITION_ACCEPTED,
    Disposition.DUPLICATE: pb.RESULT_DISPOSITION_DUPLICATE,
    Disposition.STALE: pb.RESULT_DISPOSITION_STALE,
}


class ExecutorService(executor_service_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, coordinator: Coordinator, tokens: TokenTable | None = None) -> None:
        self._coordinator = coordinator
        #: With authentication on: the tokens, to hold bound executor tokens to their executor id.
        self._tokens = tokens
        #: Open ClaimTasks streams per client connection (gRPC peer).
        self._streams: Counter[str] = Counter()

    def _check_identity(self, context: grpc.aio.ServicerContext, executor_id: str) -> None:
        """Refuse a caller whose token may not act as ``executor_id`` (see the auth module)."""
        if self._tokens is not None:
            principal = self._tokens.principal_of(context.invocation_metadata())
            require_executor_identity(principal, executor_id, self._tokens.bound_executor_ids)

    @rpc
    async def ClaimTasks(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        peer = context.peer()
        limit = self._coordinator.config.max_streams_per_connection
        if self._streams[peer] >= limit:
            raise ResourceExhausted(
                f"{self._streams[peer]} ClaimTasks streams are already open on this connection; the limit "
                f"is {limit} (an executor needs one)"
            )
        self._streams[peer] += 1
        try:
            await self._serve(context, peer)
        finally:
            self._streams[peer] -= 1
            if not self._streams[peer]:
                del self._streams[peer]

    async def _serve(self, context: grpc.aio.ServicerContext, peer: str) -> None:
        timeout = self._coordinator.config.hello_timeout
        try:
            # A stream that never says Hello would otherwise hold its slot and memory forever.
            async with asyncio.timeout(timeout):
                first = await context.read()
        except TimeoutError:
            raise DeadlineExceeded(
                f"no Hello within {timeout:g}s of opening ClaimTasks (hello_timeout); send the Hello first"
            ) from None
        if first is grpc.aio.EOF or not first.HasField("hello"):
            raise InvalidArgument("the first ClaimTasks message must be a Hello")
        self._check_identity(context, first.hello.executor_id)
        session = await self._coordinator.connect_executor(first.hello, peer)
        reader = asyncio.create_task(self._read(context, session))
        try:
            while (message := await session.outbox.get()) is not None:
                await context.write(message)
            if session.close_code:
                # Never OK without a reason: the executor learns why and reconnects.
                context.set_code(grpc.StatusCode[session.close_code])
                context.set_details(session.close_reason)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            await asyncio.shield(self._coordinator.executor_stream_closed(session))

    async def _read(self, context: grpc.aio.ServicerContext, session: ExecutorSession) -> None:
        """Credits, heartbeats and the drain notice, until the executor closes its side."""
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                kind = message.WhichOneof("message")
                if kind == "credit":
                    self._coordinator.grant_credit(session, message.credit.slots)
                elif kind == "heartbeat":
                    self._coordinator.executor_alive(session)
                elif kind == "draining":
                    reason = message.draining.reason[:MAX_ERROR_MESSAGE]
                    await self._coordinator.executor_draining(session, reason)
                else:
                    log.warning(
                        "executor %s sent an unexpected %s message; ignored", session.executor_id, kind
                    )
        finally:
            session.close_stream()

    @rpc
    async def RecordResults(
        self, request: pb.RecordResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordResultsResponse:
        config = self._coordinator.config
        executor_id = validation.identifier(request.executor_id, "executor_id")
        self._check_identity(context, executor_id)
        if len(request.results) > config.max_batch_size:
            raise InvalidArgument(
                f"{len(request.results)} results in one call; the limit is {config.max_batch_size}"
            )
        if not request.results:
            return pb.RecordResultsResponse()
        # Each result stands alone: a malformed one is refused with its reason and the
        # rest are applied, so one bad result can neither strand nor hold back the others.
        dispositions = [pb.RESULT_DISPOSITION_REFUSED] * len(request.results)
        reasons = [""] * len(request.results)
        good: list[tuple[int, ReportedResult]] = []
        for index, result in enumerate(request.results):
            try:
                good.append((index, _reported(index, result, config.max_payload_bytes)))
            except InvalidArgument as error:
                reasons[index] = str(error)
        if good:
            applied = await self._coordinator.record_results(executor_id, [r for _i, r in good])
            for (index, _result), disposition in zip(good, applied, strict=True):
                dispositions[index] = _DISPOSITION_TO_WIRE[disposition]
        return pb.RecordResultsResponse(dispositions=dispositions, reasons=reasons)


def _reported(index: int, result: pb.TaskResult, max_payload_bytes: int) -> ReportedResult:
    """Convert one result; a malformed success payload becomes a failure rather than a stuck task."""
    try:
        started_at = protocol.from_timestamp(result.started_at, f"results[{index}].started_at")
    except InvalidArgument:  # the executor's clock, kept for timings only: a wild one costs no result
        started_at = None
    outcome = result.WhichOneof("outcome")
    if outcome == "result_json":
        problem = validation.result_json(result.result_json, max_payload_bytes)
        if problem is None:
            return ReportedResult(
                result.task_id, result.fencing_token, result.result_json, started_at=started_at
            )
        return ReportedResult(
            result.task_id,
            result.fencing_token,
            error_class=ErrorClass.NON_RETRYABLE,
            error=problem,
            started_at=started_at,
        )
    if outcome == "failure":
        error_class = protocol.ERROR_CLASS_FROM_WIRE.get(result.failure.error_class)
        if error_class is None:
            raise InvalidArgument(f"results[{index}].failure.error_class is not set")
        retry_after = (
            # Bounded here, where it enters: retries clamps the top, nothing else the bottom.
            max(0.0, protocol.from_duration(result.failure.retry_after))
            if result.failure.HasField("retry_after")
            else None
        )
        return ReportedResult(
            result.task_id,
            result.fencing_token,
            error_class=error_class,
            error=validation.storable_text(result.failure.message[:MAX_ERROR_MESSAGE]) or "no message",
            retry_after=retry_after,
            started_at=started_at,
        )
    raise InvalidArgument(f"results[{index}] has neither result_json nor failure")
