"""The executor: one ClaimTasks stream, a bounded pool of running tasks, batched results.

Lifecycle::

    connect ──Hello──▶ Welcome ──▶ tasks arrive as credits allow ──▶ ... ──▶ drain ──▶ exit 0
       ▲                                                                │
       └──────────── stream lost: reconnect with backoff ◀──────────────┘

Each finished task frees a slot, which is granted back to the coordinator as a
credit; the coordinator never sends more tasks than there are free slots. Results
are reported separately (:mod:`conveyor.executor.results`) and survive reconnects: after a
reconnect the Hello lists the tasks still held, so the coordinator keeps them
leased here and returns any it sent that never arrived.

Draining (SIGTERM/SIGINT, or a Drain from the coordinator after an epoch bump):
stop taking work, finish the running tasks, report every result, close the
stream, exit 0. A second SIGINT abandons the running tasks (exit 1); their leases
expire and they run elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

import conveyor
from conveyor import logs, tracing
from conveyor.backoff import Backoff, BackoffPolicy
from conveyor.endpoints import CoordinatorEndpoints
from conveyor.errors import ConfigurationError, PermanentTaskError, TaskRateLimited
from conveyor.tasks import Handler, HandlerRegistry, TaskContext, takes_context
from conveyor.transport import ChannelSecurity
from conveyor.v1 import common_pb2
from conveyor.v1 import executor_service_pb2 as pb
from conveyor.v1.executor_service_pb2_grpc import ExecutorServiceStub

from .llm import CallOutcome, LlmCaller
from .metrics import ExecutorMetrics
from .options import OPTIONS
from .results import ResultReporter

log = logging.getLogger(__name__)

LLM_KIND = "llm"
#: Bounds on what the coordinator and the API say, so that no value can wedge the
#: executor (a zero heartbeat interval spinning, an infinite wait, an overflow).
MIN_HEARTBEAT_INTERVAL = 0.05
MAX_HEARTBEAT_INTERVAL = 60.0
MAX_TASK_TIMEOUT = 7 * 24 * 3600.0
MAX_RETRY_AFTER = 300.0


def bounded_seconds(value: float | None, low: float, high: float, default: float) -> float:
    """``value`` clamped to ``[low, high]``; ``default`` if it is missing, zero or not a number."""
    if value is None or math.isnan(value) or value == 0:
        return default
    return min(max(value, low), high)


def _seconds(duration: Duration) -> float:
    """A protobuf Duration as seconds, without ``ToTimedelta``'s overflow on huge values."""
    return float(duration.seconds) + duration.nanos / 1e9


def default_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.randbytes(2).hex()}"


@dataclass(frozen=True)
class ExecutorConfig:
    """The executor's settings; the defaults of those with an option come from :data:`OPTIONS`."""

    coordinator: str = OPTIONS.defaults.coordinator
    concurrency: int = OPTIONS.defaults.concurrency
    executor_id: str = field(default_factory=default_executor_id)
    #: Run LLM steps (task kind "llm"); an executor may serve handlers only.
    serve_llm: bool = not OPTIONS.defaults.no_llm
    #: Per-attempt time limit when the task carries none.
    default_timeout: float = OPTIONS.defaults.llm_timeout
    #: How long a graceful drain may take before running tasks are abandoned.
    drain_timeout: float = OPTIONS.defaults.drain_timeout
    flush_interval: float = 0.02
    max_message_bytes: int = 64 * 1024 * 1024
    #: The longest wait between reconnect attempts (each wait is drawn with jitter).
    reconnect_max_delay: float = 5.0
    #: TLS and bearer token for the coordinator connection.
    security: ChannelSecurity = field(default_factory=ChannelSecurity)

    def __post_init__(self) -> None:
        OPTIONS.check_bounds(self)  # however the config was built
        if not self.reconnect_max_delay > 0:
            raise ValueError(f"reconnect_max_delay must be positive, not {self.reconnect_max_delay}")


#: The ceiling of the first reconnect delay; it doubles up to ``reconnect_max_delay``.
RECONNECT_INITIAL_DELAY = 0.1


class _Credit:
    """Marker in the outgoing queue: send the credits accumulated so far as one message."""


class Executor:
    #: The coordinator addresses and the channel to the leader (set by :meth:`run`).
    _endpoints: CoordinatorEndpoints

    def __init__(self, config: ExecutorConfig, handlers: HandlerRegistry, llm: LlmCaller | None) -> None:
        if config.serve_llm and llm is None:
            raise ValueError("an executor serving LLM steps needs an LlmCaller")
        self.config = config
        self._handlers = handlers
        self._llm = llm
        self._kinds = ([LLM_KIND] if config.serve_llm else []) + handlers.kinds()
        if not self._kinds:
            raise ValueError("this executor serves no task kinds: enable LLM steps or load --handlers")
        self._running: dict[int, asyncio.Task[None]] = {}
        #: The fencing token of each running task's latest delivery: a task re-claimed for
        #: this executor (its lease expired meanwhile) comes again with a new one, and a
        #: cancel names the attempt it stops by its token.
        self._tokens: dict[int, int] = {}
        #: Running tasks the coordinator told us to stop (CancelTasks), and why.
        self._cancelled: dict[int, str] = {}
        #: A task delivered again while its cancelled attempt winds down: started when it ends.
        self._redelivered: dict[int, pb.Task] = {}
        #: Set once the stream was closed because the drain finished (idle).
        self._closed_drained = False
        self._drain_timed_out = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self._reporter = ResultReporter(config.executor_id, flush_interval=config.flush_interval)
        self._outgoing: asyncio.Queue[pb.ClaimTasksRequest | _Credit | None] = asyncio.Queue()
        self._unsent_credits = 0
        self._epoch = 0
        self._heartbeat_interval = 1.0
        self._max_payload_bytes = 1024 * 1024
        self._draining = asyncio.Event()
        self._abandon = asyncio.Event()
        #: Every reconnect delay drawn, oldest first (for logs and tests: they must differ
        #: between executors, or they all reconnect at once).
        self.reconnect_delays: list[float] = []
        self._drain_reason = ""
        self.tasks_run = 0
        #: Attempts stopped because the coordinator no longer wanted them.
        self.tasks_cancelled = 0
        self.metrics = ExecutorMetrics(
            config.concurrency, lambda: len(self._running), self._draining.is_set, self._reporter
        )

    # ------------------------------------------------------------------ control

    def drain(self, reason: str) -> None:
        """Stop taking work; finish and report the running tasks, then exit. Idempotent."""
        if self._draining.is_set():
            return
        log.info("draining (%s): finishing %d running task(s)", reason, len(self._running))
        self._drain_reason = reason
        self._draining.set()
        self._outgoing.put_nowait(pb.ClaimTasksRequest(draining=pb.Draining(reason=reason)))
        # The deadline covers the whole drain, running calls included: when it passes,
        # they are cancelled (the SDK request with them) and the executor exits.
        self._drain_timer = asyncio.get_running_loop().call_later(
            self.config.drain_timeout, self._drain_expired
        )

    def _drain_expired(self) -> None:
        if self._abandon.is_set() or self._closed_drained:
            return
        log.error(
            "drain timed out after %.0fs with %d task(s) running and %d result(s) unreported; cancelling "
            "them: their leases will expire and they will run elsewhere",
            self.config.drain_timeout,
            len(self._running),
            len(self._reporter.pending_task_ids()),
        )
        self._drain_timed_out = True
        self._abandon.set()
        for task in self._running.values():
            task.cancel()

    def abandon(self) -> None:
        """Stop now, leaving running tasks to be re-run elsewhere once their leases expire."""
        log.warning("abandoning %d running task(s)", len(self._running))
        self.drain("abandoned")
        self._abandon.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM drains; SIGINT drains, and a second SIGINT (Ctrl-C twice) abandons."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.drain, "SIGTERM")
        loop.add_signal_handler(
            signal.SIGINT, lambda: self.abandon() if self._draining.is_set() else self.drain("SIGINT")
        )

    async def run(self) -> int:
        """Serve until drained; returns the process exit code."""
        options = [
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            ("grpc.max_send_message_length", self.config.max_message_bytes),
            # A stalled (SIGSTOPped, partitioned) coordinator answers no ping: the stream is
            # given up within 10 s, and the executor moves on to the leader.
            ("grpc.keepalive_time_ms", 5_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        endpoints = self._endpoints = CoordinatorEndpoints(
            self.config.coordinator, self.config.security, options=options
        )
        # The reporter makes one call at a time: the channel of its last stub is that of a failure.
        report_channel = endpoints.channel

        def report_stub() -> ExecutorServiceStub:
            nonlocal report_channel
            report_channel = endpoints.channel
            return ExecutorServiceStub(report_channel)

        reporter = asyncio.create_task(
            self._reporter.run(report_stub, lambda error: endpoints.follow(error, report_channel)),
            name="report results",
        )
        try:
            await self._serve()
            return await self._finish_drain()
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            for task in self._running.values():
                task.cancel()
            if self._llm is not None:
                await self._llm.close()
            await endpoints.close()

    async def _serve(self) -> None:
        """Keep a stream open, reconnecting with backoff, until draining."""
        # Jittered, so that executors cut off by one coordinator restart do not all come back
        # at the same instants.
        maximum = self.config.reconnect_max_delay
        backoff = Backoff(BackoffPolicy(initial=min(RECONNECT_INITIAL_DELAY, maximum), maximum=maximum))
        # Draining does not stop reconnecting: until everything held is reported the
        # executor must keep heartbeating, or its lease expires and its tasks run twice.
        while not self._closed_drained and not self._abandon.is_set():
            connected_at = time.monotonic()
            channel = self._endpoints.channel
            try:
                await self._stream(ExecutorServiceStub(channel))
            except grpc.aio.AioRpcError as error:
                # A standby names the leader; a coordinator that is gone makes way for the next.
                self._endpoints.follow(error, channel)
                if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED):
                    raise
                if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise ConfigurationError(
                        f"the coordinator at {self._endpoints.current} refused this executor "
                        f"({error.code().name}: {error.details()}); check its token (--token-file or "
                        "$CONVEYOR_TOKEN) and --executor-id"
                    ) from None
                level = logging.INFO if error.code() == grpc.StatusCode.UNAVAILABLE else logging.WARNING
                log.log(
                    level,
                    "stream to %s lost (%s: %s)",
                    self._endpoints.current,
                    error.code().name,
                    error.details(),
                )
            if self._closed_drained or self._abandon.is_set():
                break
            if time.monotonic() - connected_at > 10:
                backoff.reset()
            delay = backoff.next_delay() or 0.0
            self.reconnect_delays.append(delay)
            log.info("reconnecting in %.2fs", delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._abandon.wait()

    async def _stream(self, stub: ExecutorServiceStub) -> None:
        self._outgoing = asyncio.Queue()
        self._unsent_credits = 0
        hello = pb.Hello(
            executor_id=self.config.executor_id,
            epoch=self._epoch,
            task_kinds=self._kinds,
            capacity=self.config.concurrency,
            free_slots=self.config.concurrency - len(self._running),
            held_task_ids=[*self._running, *self._reporter.pending_task_ids()],
            version=conveyor.__version__,
            draining=self._draining.is_set(),
        )
        call = stub.ClaimTasks(self._requests(hello))
        helpers = [
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self._close_after_drain()),
            asyncio.create_task(self._cancel_on_abandon(call)),
        ]
        try:
            async for message in call:
                kind = message.WhichOneof("message")
                if kind == "tasks":
                    for task in message.tasks.tasks:
                        self._start(task)
                elif kind == "welcome":
                    self._welcome(message.welcome)
                elif kind == "shards":
                    log.debug("leasing shards %s", list(message.shards.shards))
                elif kind == "drain":
                    self.drain(f"coordinator: {message.drain.reason}")
                elif kind == "cancel":
                    self._cancel(message.cancel)
        except asyncio.CancelledError:
            if not self._abandon.is_set():
                raise
        finally:
            for helper in helpers:
                helper.cancel()
            call.cancel()

    def _welcome(self, welcome: pb.Welcome) -> None:
        if self._epoch and welcome.epoch != self._epoch:
            log.warning("rejoined in epoch %d (was %d)", welcome.epoch, self._epoch)
        self._epoch = welcome.epoch
        self._heartbeat_interval = bounded_seconds(
            _seconds(welcome.heartbeat_interval), MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL, 1.0
        )
        if welcome.max_payload_bytes > 0:
            self._max_payload_bytes = welcome.max_payload_bytes
        if welcome.max_batch_size > 0:
            self._reporter.max_batch = welcome.max_batch_size
        log.info(
            "connected to %s as %s: epoch %d, %d slots, kinds %s",
            self._endpoints.current,
            self.config.executor_id,
            welcome.epoch,
            self.config.concurrency,
            ",".join(self._kinds),
        )

    async def _requests(self, hello: pb.Hello) -> AsyncIterator[pb.ClaimTasksRequest]:
        yield pb.ClaimTasksRequest(hello=hello)
        if self._draining.is_set():
            yield pb.ClaimTasksRequest(draining=pb.Draining(reason=self._drain_reason))
        while (item := await self._outgoing.get()) is not None:
            if isinstance(item, _Credit):
                slots, self._unsent_credits = self._unsent_credits, 0
                if slots and not self._draining.is_set():
                    yield pb.ClaimTasksRequest(credit=pb.Credit(slots=slots))
            else:
                yield item

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            self._outgoing.put_nowait(
                pb.ClaimTasksRequest(heartbeat=pb.Heartbeat(running_tasks=len(self._running)))
            )

    async def _close_after_drain(self) -> None:
        """Once draining and idle (nothing running, every result reported), end the stream."""
        await self._draining.wait()
        await self._idle()
        self._closed_drained = True
        self._outgoing.put_nowait(None)

    async def _cancel_on_abandon(self, call: Any) -> None:
        await self._abandon.wait()
        call.cancel()

    async def _idle(self) -> None:
        while self._running:
            await asyncio.wait(list(self._running.values()))
        await self._reporter.wait_drained()

    async def _finish_drain(self) -> int:
        # Bounded by the drain timer (see drain()), which sets the abandon flag.
        await self._wait_idle_or_abandoned()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if self._abandon.is_set():
            return 1
        log.info(
            "drained: %d task(s) run, %d result(s) reported; exiting", self.tasks_run, self._reporter.reported
        )
        return 0

    async def _wait_idle_or_abandoned(self) -> None:
        idle = asyncio.create_task(self._idle())
        abandon = asyncio.create_task(self._abandon.wait())
        await asyncio.wait([idle, abandon], return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        abandon.cancel()

    # -------------------------------------------------------------------- tasks

    def _start(self, task: pb.Task) -> None:
        """Run a task, unless it is one this executor already holds.

        A held task comes again when its lease expired (a pause, a slow reconnect) and it
        was claimed anew for this same executor: it is not run twice, its newer token is
        adopted for the result, and the slot the coordinator counted for it is given back.
        """
        if task.task_id in self._running:
            if task.task_id in self._cancelled:
                # Taken back and re-claimed for us while the cancelled attempt still winds
                # down: run the new attempt once the old one has ended (one task per id).
                if self._redelivered.pop(task.task_id, None) is not None:
                    self._release_slot()  # superseded before it started: its credit goes back
                self._redelivered[task.task_id] = task
                return
            self._tokens[task.task_id] = task.fencing_token  # tokens are random: the latest is current
            log.info("task %d came again with a newer token; still running it", task.task_id)
            self._release_slot()
            return
        if self._reporter.adopt(task.task_id, task.fencing_token):
            log.info("task %d came again with a newer token; its result is reported with it", task.task_id)
            self._release_slot()
            return
        self._tokens[task.task_id] = task.fencing_token
        self._running[task.task_id] = asyncio.create_task(self._run_task(task), name=f"task {task.task_id}")

    def _cancel(self, cancel: pb.CancelTasks) -> None:
        """Stop the attempts the coordinator no longer wants (its result would be rejected).

        Cancelling the task's asyncio task aborts the in-flight SDK request (its connection
        is closed, so the API stops generating) or stops waiting for a handler; the attempt
        is then reported as cancelled and its slot granted back (see `_run_task`). A cancel
        for an older delivery of a task than the one running leaves it running.
        """
        for attempt in cancel.tasks:
            waiting = self._redelivered.get(attempt.task_id)
            if waiting is not None and attempt.fencing_token in (0, waiting.fencing_token):
                del self._redelivered[attempt.task_id]  # never started: only its credit to give back
                self._release_slot()
            running = self._running.get(attempt.task_id)
            token = self._tokens.get(attempt.task_id)
            # Token 0 means any attempt of the task; otherwise only the attempt delivered
            # with that token (a cancel crossing a newer delivery leaves that one alone).
            if running is None or token is None or attempt.fencing_token not in (0, token):
                continue
            if attempt.task_id not in self._cancelled:
                self._cancelled[attempt.task_id] = cancel.reason or "no reason given"
                running.cancel()

    async def _run_task(self, task: pb.Task) -> None:
        started = Timestamp()
        started.GetCurrentTime()
        began = time.monotonic()
        timeout = bounded_seconds(
            _seconds(task.timeout), 0.001, MAX_TASK_TIMEOUT, self.config.default_timeout
        )
        cancelled = False
        try:
            outcome = await self._execute(task, timeout)
        except asyncio.CancelledError:
            reason = self._cancelled.pop(task.task_id, None)
            if reason is None:
                raise  # the executor is shutting down, not a cancel from the coordinator
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # handled: later awaits of this task must not see it
            self.tasks_cancelled += 1
            cancelled = True
            log.info(
                "task %d (workflow %s, step %d %r) stopped: the coordinator cancelled it (%s)",
                task.task_id,
                task.workflow_id,
                task.step_number,
                task.name,
                reason,
                extra=_task_fields(task),
            )
            message = f"cancelled by the coordinator: {reason}"
            outcome = CallOutcome(error_class=common_pb2.ERROR_CLASS_RETRYABLE, message=message)
        except Exception as error:  # a bug here must not lose the task
            log.exception(
                "task %d crashed the executor's task runner", task.task_id, extra=_task_fields(task)
            )
            outcome = CallOutcome(
                error_class=common_pb2.ERROR_CLASS_RETRYABLE, message=f"executor error: {error!r}"
            )
        finished = Timestamp()
        finished.GetCurrentTime()
        # The latest token delivered for this task (see _start); a cancelled attempt keeps its own.
        latest = self._tokens.pop(task.task_id, task.fencing_token)
        token = task.fencing_token if cancelled else latest
        result = pb.TaskResult(
            task_id=task.task_id, fencing_token=token, started_at=started, finished_at=finished
        )
        if outcome.result_json is not None:
            size = len(outcome.result_json.encode())
            if size <= self._max_payload_bytes:
                result.result_json = outcome.result_json
            else:
                outcome = CallOutcome(
                    error_class=common_pb2.ERROR_CLASS_NON_RETRYABLE,
                    message=f"the result is {size} bytes; the limit is {self._max_payload_bytes}",
                )
        if outcome.result_json is None:
            result.failure.CopyFrom(
                pb.TaskFailure(error_class=outcome.error_class, message=outcome.message[:4000])
            )
            if outcome.retry_after is not None:
                # From the API or a handler: an infinite or negative wait would overflow or
                # wedge, and this must never raise (the result would be lost, the slot leaked).
                wait = bounded_seconds(outcome.retry_after, 0.0, MAX_RETRY_AFTER, 0.0)
                result.failure.retry_after.FromNanoseconds(int(wait * 1e9))
        if cancelled:  # logged above; not a failure of the task itself
            self.metrics.ran(task.kind, "cancelled", time.monotonic() - began)
        else:
            self._observe(task, outcome, time.monotonic() - began)
        # A cancelled attempt's result is never moved onto a newer token (see ResultReporter.adopt).
        self._reporter.add(result, adoptable=not cancelled)
        del self._running[task.task_id]
        self._cancelled.pop(task.task_id, None)
        self.tasks_run += 1
        again = self._redelivered.pop(task.task_id, None)
        if again is not None:
            self._start(again)  # uses the slot this attempt frees, and the credit it came with
            return
        self._release_slot()

    @property
    def running_tasks(self) -> int:
        """Tasks running now (slots in use)."""
        return len(self._running)

    def _observe(self, task: pb.Task, outcome: CallOutcome, seconds: float) -> None:
        """Count the attempt; log a failed one with the ids of its workflow and step."""
        if outcome.result_json is not None:
            self.metrics.ran(task.kind, "success", seconds)
            return
        error_class = common_pb2.ErrorClass.Name(outcome.error_class or 0)
        error_class = error_class.removeprefix("ERROR_CLASS_").lower()
        self.metrics.ran(task.kind, error_class, seconds)
        # 429s come in bursts and the queue handles them: keep them out of the INFO log.
        level = logging.DEBUG if outcome.error_class == common_pb2.ERROR_CLASS_RATE_LIMITED else logging.INFO
        log.log(
            level,
            "task %d (workflow %s, step %d %r, attempt %d of %d) failed, %s: %s",
            task.task_id,
            task.workflow_id,
            task.step_number,
            task.name,
            task.attempt,
            task.max_attempts,
            error_class.replace("_", "-"),
            outcome.message,
            extra=_task_fields(task),
        )

    def _release_slot(self) -> None:
        if self._draining.is_set():
            return
        self._unsent_credits += 1
        if self._unsent_credits == 1:
            self._outgoing.put_nowait(_Credit())

    async def _execute(self, task: pb.Task, timeout: float) -> CallOutcome:
        """Run one attempt in a ``conveyor.task`` span under the workflow's trace: the anthropic
        SDK's span of the API call, and the log lines of the attempt, belong to it."""
        with tracing.span(
            "conveyor.task",
            parent=task.trace_context,
            kind="consumer",
            attributes={
                "conveyor.workflow.id": task.workflow_id,
                "conveyor.step.number": task.step_number,
                "conveyor.step.name": task.name,
                "conveyor.task.id": task.task_id,
                "conveyor.task.kind": task.kind,
                "conveyor.task.attempt": task.attempt,
                "conveyor.executor.id": self.config.executor_id,
            },
        ) as span:
            outcome = await self._attempt(task, timeout)
            if outcome.result_json is None:
                error_class = common_pb2.ErrorClass.Name(outcome.error_class or 0)
                span.set_attribute("error.type", error_class.removeprefix("ERROR_CLASS_").lower())
                span.fail(outcome.message)
            return outcome

    async def _attempt(self, task: pb.Task, timeout: float) -> CallOutcome:
        if task.kind == LLM_KIND and self._llm is not None:
            return await self._llm.call(task.payload_json, timeout)
        handler = self._handlers.get(task.kind)
        if handler is None:
            return CallOutcome(
                error_class=common_pb2.ERROR_CLASS_NON_RETRYABLE,
                message=f"executor {self.config.executor_id} has no handler for task kind {task.kind!r}",
            )
        return await _run_handler(handler, task, timeout)


def _task_fields(task: pb.Task) -> dict[str, Any]:
    return logs.fields(
        workflow_id=task.workflow_id,
        step_number=task.step_number,
        step_name=task.name,
        task_id=task.task_id,
        attempt=task.attempt,
        shard=task.shard,
    )


def task_context(task: pb.Task) -> TaskContext:
    """What a handler declared with ``context=True`` learns about its attempt."""
    return TaskContext(
        workflow_id=task.workflow_id,
        step_number=task.step_number,
        step_name=task.name,
        kind=task.kind,
        attempt=task.attempt,
        max_attempts=task.max_attempts,
    )


async def _run_handler(handler: Handler, task: pb.Task, timeout: float) -> CallOutcome:
    try:
        payload = json.loads(task.payload_json)["payload"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        return CallOutcome(
            error_class=common_pb2.ERROR_CLASS_NON_RETRYABLE, message=f"malformed task payload: {error!r}"
        )
    arguments = (payload, task_context(task)) if takes_context(handler) else (payload,)
    try:
        async with asyncio.timeout(timeout):
            if asyncio.iscoroutinefunction(handler):
                value = await handler(*arguments)
            else:
                value = await asyncio.to_thread(handler, *arguments)
    except TimeoutError:
        return CallOutcome(
            error_class=common_pb2.ERROR_CLASS_RETRYABLE, message=f"handler timed out after {timeout:.0f}s"
        )
    except PermanentTaskError as error:
        return CallOutcome(error_class=common_pb2.ERROR_CLASS_NON_RETRYABLE, message=str(error))
    except TaskRateLimited as error:
        return CallOutcome(
            error_class=common_pb2.ERROR_CLASS_RATE_LIMITED, message=str(error), retry_after=error.retry_after
        )
    except Exception as error:
        return CallOutcome(
            error_class=common_pb2.ERROR_CLASS_RETRYABLE, message=f"{type(error).__name__}: {error}"
        )
    try:
        return CallOutcome(result_json=json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        return CallOutcome(
            error_class=common_pb2.ERROR_CLASS_NON_RETRYABLE,
            message=f"handler for {task.kind!r} returned a value that is not JSON: {error}",
        )
