"""The coordinator's core: the store, the connected executors, and the loops that move work.

The path of one step, each arrow one write transaction on the writer thread::

    result batch ──record──▶ replay queue ──replay──▶ new tasks ──claim──▶ executor

* ``record`` (RecordResults) finishes steps and enqueues a replay for each workflow
  left with nothing in progress, then wakes the replay loop;
* the replay loop drains the replay queue oldest workflow first, starting the next
  steps or finishing workflows, then wakes the executors whose shards got tasks;
* the dispatch loop claims tasks for every executor with free credits and work on
  its shards, and pushes them down its stream.

Nothing waits on a timer on that path. Timers exist only for what is due later
(retry backoffs, ``ctx.sleep``), for lease expiry, and as a once-a-second safety
sweep. Everything durable is in the database; the in-memory state (sessions,
leases, credits) is rebuilt from executors reconnecting after a restart.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from conveyor import logs
from conveyor.errors import ConveyorError, InvalidArgument, ResourceExhausted
from conveyor.v1 import executor_service_pb2 as pb
from conveyor.workflow import WorkflowRegistry

from . import explain, protocol, validation
from .alarm import Alarm
from .clock import CreationClock, now_us
from .config import CoordinatorConfig
from .metrics import CoordinatorMetrics
from .model import WorkflowStatus
from .replay_runner import ReplayCall, ReplayRunner
from .sessions import ExecutorSession, SessionRegistry, SessionState, pool_name
from .store import (
    ClaimedTask,
    Database,
    Disposition,
    ExecutorRecords,
    ReplayQueue,
    ReportedResult,
    ShardDepth,
    Started,
    StartRequest,
    TaskQueue,
    Timers,
    Violation,
    WorkflowRecord,
    Workflows,
    WorkflowSelection,
    Writer,
    deadlines,
    diagnosis,
    inspection,
)
from .store.deadlines import Claim, ExpiryOutcome
from .store.ownership import DatabaseLock
from .store.queue import RequeueOutcome, TaskDeadlines
from .store.reader import Reader
from .store.replays import ReplayBatchOutcome
from .store.schema import tasks

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long stop() waits for the background loops to end once cancelled (they end at once).
LOOP_STOP_TIMEOUT = 10.0
#: How often idle executors are offered work even without a wake-up, in case one was missed.
SAFETY_SWEEP_INTERVAL = 1.0
#: How often the sweep re-arms every loop's wake-up (replays, timers, retry backoffs), so
#: work left by a lost wake-up (a failed write, a crashed loop) is found without new traffic.
REARM_INTERVAL = 5.0
#: How often executors' last heartbeats are copied to the database, for operators.
HEARTBEAT_PERSIST_INTERVAL = 5.0
#: Workflows cancelled per write transaction by CancelWorkflows, so other writes interleave.
BULK_CANCEL_BATCH = 500
#: Workflow ids a CancelWorkflows answer lists, for the operator to check the filter.
BULK_CANCEL_SAMPLE = 20
#: Longest the deadline loop waits before reading the earliest deadline again.
DEADLINE_CHECK_INTERVAL = 1.0


@dataclass
class CoordinatorStats:
    """Counters since start-up (exported as metrics, shown by Diagnose)."""

    workflows_started: int = 0
    workflows_finished: dict[str, int] = field(default_factory=dict)
    results_accepted: int = 0
    results_duplicate: int = 0
    results_stale: int = 0
    tasks_claimed: int = 0
    replays: int = 0
    leases_expired: int = 0
    #: Attempts taken back at their start-to-close deadline.
    deadlines_expired: int = 0
    #: Attempts executors were told to stop (CancelTasks).
    attempts_cancelled: int = 0


@dataclass(frozen=True)
class ExecutorView:
    session: ExecutorSession
    claimed_tasks: int
    seconds_since_heartbeat: float


@dataclass(frozen=True)
class DiagnoseReport:
    epoch: int
    shard_count: int
    shards: list[ShardDepth]
    replay_queue_depth: int
    executors: list[ExecutorView]
    violations: list[Violation]
    workflows_by_status: dict[str, int]
    rejected_stale_results: int
    generated_at: int


class Coordinator:
    def __init__(self, config: CoordinatorConfig, registry: WorkflowRegistry) -> None:
        self.config = config
        self.registry = registry
        # A write waiting on another process's SQLite lock must not outlast the retry deadline,
        # or a locked file holds every unit far past the moment it should fail as Unavailable.
        self.database = Database(
            config.database_url,
            sqlite_synchronous=config.sqlite_synchronous,
            sqlite_busy_timeout=min(30.0, config.database_retry_deadline),
        )
        self.stats = CoordinatorStats()
        self.metrics = CoordinatorMetrics(self.stats)
        self.epoch = 0
        self.shard_count = 0
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        #: Executor ids whose Hello passed the max_executors check and is being registered.
        self._connecting: collections.Counter[str] = collections.Counter()
        self._replay_needed = asyncio.Event()
        self._dispatch_needed = asyncio.Event()
        self._timer_due = asyncio.Event()
        self._retry_due = asyncio.Event()
        self._timer_alarm = Alarm(self._timer_due.set)
        self._retry_alarm = Alarm(self._retry_due.set)
        #: Failures of each background loop since start-up (each one re-armed every loop).
        self._loop_failures: dict[str, int] = {}
        #: Held by a registration and by an epoch bump from reading the epoch until the
        #: session is in (or the sessions are drained for) it: interleaved, a Hello could
        #: register into the epoch a bump had just ended, and idle there never drained.
        self._membership = asyncio.Lock()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        # The database's exclusive lock comes first, before even migrating: a second
        # coordinator would requeue the first one's running tasks (see store/ownership.py).
        self.lock = DatabaseLock(self.database.dialect)
        await asyncio.to_thread(self.lock.acquire)
        try:
            await self._start()
        except BaseException:
            self.lock.release()
            raise

    async def _start(self) -> None:
        await asyncio.to_thread(self.database.migrate)
        await asyncio.to_thread(self.database.record_holder, self.lock)
        facts = await asyncio.to_thread(self.database.open_cluster, self.config.shards)
        self.shard_count, self.epoch = facts.shard_count, facts.epoch
        dialect = self.database.dialect
        self.workflows = Workflows(facts.shard_count, CreationClock(facts.last_created_at))
        self.queue = TaskQueue(
            dialect,
            order=self.config.claim_order,
            shard_count=facts.shard_count,
            deadlines=TaskDeadlines(self.config.default_task_timeout, self.config.task_deadline_grace),
        )
        self.replays = ReplayQueue(dialect, self.registry, max_payload_bytes=self.config.max_payload_bytes)
        self.replay_runner = ReplayRunner(self.config.replay_timeout)
        self.timers = Timers(dialect)
        self.sessions = SessionRegistry(facts.shard_count)
        self.writer = Writer(
            self.database.writer,
            group_commit_window=self.config.group_commit_window,
            retry_deadline=self.config.database_retry_deadline,
            guard=self.lock.check,
        )
        self.writer.start()
        self.reader = Reader(self.database, retry_deadline=self.config.database_retry_deadline)
        await self._recover()
        loops = (
            self._replay_loop,
            self._dispatch_loop,
            self._timer_loop,
            self._retry_loop,
            self._lease_loop,
            self._sweep_loop,
            self._deadline_loop,
        )
        for loop in loops:
            self._loops.append(asyncio.create_task(self._supervised(loop), name=loop.__name__))
        log.info(
            "coordinator ready: %s, %d shards, epoch %d, workflows: %s",
            self.database.dialect.display_url(),
            self.shard_count,
            self.epoch,
            ", ".join(self.registry.names()) or "none",
        )

    def close_executor_streams(self) -> None:
        """First step of a shutdown: end every executor's stream; they reconnect to the next coordinator."""
        self._stopping = True
        for session in self.sessions:
            session.close_stream(
                "UNAVAILABLE", "the coordinator is shutting down; reconnect with the tasks held"
            )

    async def stop(self) -> None:
        self.close_executor_streams()
        for task in self._loops:
            task.cancel()
        if self._loops:
            _done, running = await asyncio.wait(self._loops, timeout=LOOP_STOP_TIMEOUT)
            for task in running:
                # A bug (a loop that swallowed its cancellation): stop anyway, rather than never.
                log.error(
                    "background loop %s did not stop within %gs of being cancelled; stopping without it",
                    task.get_name(),
                    LOOP_STOP_TIMEOUT,
                )
        self._timer_alarm.cancel()
        self._retry_alarm.cancel()
        self.replay_runner.stop()
        await self.writer.stop()
        await asyncio.to_thread(self.database.dispose)
        await asyncio.to_thread(self.lock.release)

    async def _recover(self) -> None:
        """Pick up where a previous coordinator process left off.

        Executors that held tasks get one lease period to reconnect and report;
        afterwards their tasks go back to the queue. Pending replays and timers run.
        """

        def holders(connection: Connection) -> list[str]:
            ExecutorRecords.clear_leases(connection)
            return list(
                connection.execute(
                    select(tasks.c.claimed_by).where(tasks.c.claimed_by.is_not(None)).distinct()
                ).scalars()
            )

        for executor_id in await self.writer.run(holders, "recover"):
            ghost = ExecutorSession(
                executor_id, self.epoch, frozenset(), 0, "", now_us(), state=SessionState.DISCONNECTED
            )
            self.sessions.put(ghost)
        self._replay_needed.set()
        self._timer_due.set()
        self._retry_due.set()

    async def _supervised(self, loop: Callable[[], Any]) -> None:
        """Keep a background loop running through database outages and bugs.

        Wake-ups are level-triggered: a loop clears its event before doing the work, so
        a loop that failed half-way may have swallowed the only wake-up for work still
        waiting. Every restart therefore re-arms every loop, and they re-check.
        """
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except ConveyorError as error:
                log.warning("%s: %s; retrying in 1s", loop.__name__, error)
            except Exception:
                log.exception("%s crashed; restarting it in 1s", loop.__name__)
            self._loop_failures[loop.__name__] = self._loop_failures.get(loop.__name__, 0) + 1
            await asyncio.sleep(1.0)
            self._rearm()

    def _rearm(self) -> None:
        """Set every loop's wake-up: each re-checks its work (a no-op when there is none)."""
        self._replay_needed.set()
        self._timer_due.set()
        self._retry_due.set()
        self._wake_all()

    def healthy(self) -> tuple[bool, str]:
        """Whether the coordinator can still make progress, and if not, why (for health checks).

        Unhealthy when the database lock was lost, the writer thread or the replay runner's
        thread has died (every write or replay would hang) or a background loop has ended
        (its work would never be done) while the coordinator is not stopping.
        """
        problems = []
        if self.lock.fenced is not None:
            problems.append(self.lock.fenced)
        if not self.writer.alive:
            problems.append("the database writer thread has died; restart the coordinator")
        if not self.replay_runner.healthy():
            problems.append("the thread that runs workflow code has died; restart the coordinator")
        for task in self._loops:
            if task.done() and not self._stopping:
                reason = "cancelled" if task.cancelled() else repr(task.exception())
                problems.append(
                    f"background loop {task.get_name()} has ended ({reason}); restart the coordinator"
                )
        if problems:
            return False, "; ".join(problems)
        return True, "serving"

    # ------------------------------------------------------------------ helpers

    async def _write(self, unit: Callable[[Connection], T], label: str) -> T:
        return await self.writer.run(unit, label)

    async def _read(self, query: Callable[[Connection], T], *, snapshot: bool = False) -> T:
        """Run ``query`` in a read transaction (see :meth:`Reader.run`), riding out database restarts."""
        return await self.reader.run(query, snapshot=snapshot)

    async def read(self, query: Callable[[Connection], T]) -> T:
        """Run the read-only ``query`` in one snapshot on the reader pool (for the status page)."""
        return await self._read(query, snapshot=True)

    async def _write_revoking(
        self,
        unit: Callable[[Connection], T],
        label: str,
        reason: str,
        claims: Callable[[Connection], list[Claim]] = deadlines.claimed_tasks,
    ) -> T:
        """Run ``unit`` and tell executors to stop every attempt it took away from them.

        ``claims`` reads, before the unit, the claims it may revoke (by default all of
        them, which the executors' capacity bounds); those that no longer stand after it,
        in the same transaction, are sent a CancelTasks.
        """

        def run(connection: Connection) -> tuple[T, list[Claim]]:
            before = claims(connection)
            result = unit(connection)
            return result, deadlines.revoked_since(connection, before)

        result, revoked = await self._write(run, label)
        self._send_cancels(revoked, reason)
        return result

    def _send_cancels(
        self, claims: Collection[Claim], reason: str, sessions: Collection[ExecutorSession] | None = None
    ) -> None:
        """Tell each executor holding one of ``claims`` to stop that attempt (CancelTasks).

        An executor that is not connected is told when it reconnects (:meth:`connect_executor`
        cancels every held task that is no longer its own). ``sessions`` pins the sessions to
        use (a session not yet in the registry).
        """
        by_executor: dict[str, list[Claim]] = {}
        for claim in claims:
            by_executor.setdefault(claim.executor_id, []).append(claim)
        pinned = {session.executor_id: session for session in sessions or ()}
        size = self.config.max_batch_size
        for executor_id, held in by_executor.items():
            session = pinned.get(executor_id) or self.sessions.get(executor_id)
            if session is None or session.state is SessionState.DISCONNECTED:
                continue
            self.stats.attempts_cancelled += len(held)
            attempts = [pb.TaskAttempt(task_id=c.task_id, fencing_token=c.fencing_token) for c in held]
            for start in range(0, len(held), size):
                session.send(
                    pb.ClaimTasksResponse(
                        cancel=pb.CancelTasks(tasks=attempts[start : start + size], reason=reason)
                    )
                )
            log.info(
                "told executor %s to stop %d attempt(s): %s",
                executor_id,
                len(held),
                reason,
                extra=logs.fields(executor_id=executor_id),
            )

    def _wake_holders(self, shards: set[int]) -> None:
        for session in self.sessions.holders(shards):
            session.maybe_work = True
        if shards:
            self._dispatch_needed.set()

    def _wake_all(self) -> None:
        for session in self.sessions:
            session.maybe_work = True
        self._dispatch_needed.set()

    # ---------------------------------------------------------------- workflows

    async def start_workflows(
        self, requests: Sequence[tuple[str, str, str]], trace_contexts: Sequence[str | None] = ()
    ) -> list[Started]:
        """Start workflows given as (name, args_json, idempotency_key); all or none. ``trace_contexts``:
        each one's stored W3C Trace Context (conveyor.tracing.encode), in the same order."""
        if not requests:
            raise InvalidArgument("no workflows to start")
        if len(requests) > self.config.max_start_batch:
            raise InvalidArgument(
                f"{len(requests)} workflows in one call; the limit is {self.config.max_start_batch}"
            )
        starts = []
        for index, (name, args_json, key) in enumerate(requests):
            try:
                _definition, canonical_args = validation.workflow_start(
                    self.registry, name, args_json, self.config.max_payload_bytes
                )
                validation.identifier(key, "idempotency_key", required=False)
            except InvalidArgument as error:
                if len(requests) == 1:
                    raise
                raise InvalidArgument(f"workflow #{index}: {error.message}") from None
            trace = trace_contexts[index] if index < len(trace_contexts) else None
            starts.append(StartRequest(name, canonical_args, key or None, trace))
        started = await self._write(functools.partial(self.workflows.start, requests=starts), "start")
        self.stats.workflows_started += sum(1 for s in started if not s.already_existed)
        self._replay_needed.set()
        return started

    async def get_workflow(self, workflow_id: str, *, include_steps: bool) -> WorkflowRecord:
        validation.identifier(workflow_id, "workflow_id")
        return await self._read(
            functools.partial(self.workflows.get, workflow_id=workflow_id, include_steps=include_steps)
        )

    async def list_workflows(
        self,
        *,
        statuses: Collection[WorkflowStatus],
        name: str,
        page_size: int,
        page_token: str,
        newest_first: bool,
    ) -> tuple[list[WorkflowRecord], str | None]:
        if page_size < 0 or page_size > 1000:
            raise InvalidArgument(
                f"page_size must be between 1 and 1000 (0 for the default 100), not {page_size}"
            )
        validation.identifier(name, "name", required=False)
        return await self._read(
            functools.partial(
                self.workflows.list,
                statuses=statuses,
                name=name or None,
                page_size=page_size or 100,
                page_token=page_token or None,
                newest_first=newest_first,
            )
        )

    async def count_workflows(self, name: str) -> dict[str, int]:
        validation.identifier(name, "name", required=False)
        return await self._read(functools.partial(Workflows.count_by_status, name=name or None))

    async def cancel_workflow(self, workflow_id: str, reason: str) -> WorkflowRecord:
        validation.identifier(workflow_id, "workflow_id")
        validation.reason(reason)
        record = await self._write_revoking(
            functools.partial(
                self.workflows.cancel,
                workflow_id=workflow_id,
                reason=reason or "cancelled by a client",
                now=now_us(),
            ),
            "cancel",
            f"workflow {workflow_id} was cancelled",
            functools.partial(deadlines.claimed_tasks, workflow_id=workflow_id),
        )
        self._count_finished(WorkflowStatus.CANCELLED, 1)
        return record

    async def explain_workflow(self, workflow_id: str) -> explain.Explanation:
        """Why the workflow is where it is (see :mod:`conveyor.coordinator.explain`)."""
        validation.identifier(workflow_id, "workflow_id")
        now = now_us()
        facts = await self._read(
            functools.partial(
                inspection.workflow_facts,
                workflows=self.workflows,
                workflow_id=workflow_id,
                now=now,
                claim_order=self.config.claim_order,
            ),
            snapshot=True,
        )
        return explain.explain(
            facts, self.executor_presences(), self.registry.names(), now, self.config.lease_ttl
        )

    def executor_presences(self) -> list[explain.ExecutorPresence]:
        """Every executor session as it stands now, sorted by id."""
        monotonic_now = time.monotonic()
        return [
            explain.ExecutorPresence(
                executor_id=session.executor_id,
                live=session.state is SessionState.LIVE and session.epoch == self.epoch,
                connected=session.state is not SessionState.DISCONNECTED,
                task_kinds=session.task_kinds,
                shards=session.shards,
                seconds_since_heartbeat=monotonic_now - session.last_seen,
            )
            for session in sorted(self.sessions, key=lambda s: s.executor_id)
        ]

    def _count_finished(self, status: WorkflowStatus, count: int) -> None:
        self.stats.workflows_finished[status.value] = (
            self.stats.workflows_finished.get(status.value, 0) + count
        )

    # ----------------------------------------------------------------- executors

    async def connect_executor(self, hello: pb.Hello, peer: str) -> ExecutorSession:
        """Register an executor from its Hello; its stream then reads ``session.outbox``."""
        async with self._membership:
            return await self._connect_executor(hello, peer)

    async def _connect_executor(self, hello: pb.Hello, peer: str) -> ExecutorSession:
        executor_id = validation.identifier(hello.executor_id, "hello.executor_id")
        if not 1 <= hello.capacity <= 100_000:
            raise InvalidArgument(f"hello.capacity must be between 1 and 100000, not {hello.capacity}")
        kinds = frozenset(validation.identifier(kind, "hello.task_kinds[]") for kind in hello.task_kinds)
        if not kinds or len(kinds) > 100:
            raise InvalidArgument(
                'hello.task_kinds must name between 1 and 100 task kinds ("llm" for LLM steps)'
            )
        if len(pool_name(kinds)) > validation.MAX_NAME_LENGTH:  # the pool is stored as a name, whole
            raise InvalidArgument(
                f"hello.task_kinds, joined with commas, are {len(pool_name(kinds))} characters; the limit "
                f"is {validation.MAX_NAME_LENGTH} (serve fewer kinds per executor, or shorter names)"
            )
        epoch = hello.epoch or self.epoch
        # An executor that was draining before its stream dropped still is: it gets no new
        # work, but its heartbeats keep the tasks it is finishing leased to it.
        state = SessionState.LIVE if epoch == self.epoch and not hello.draining else SessionState.DRAINING
        session = ExecutorSession(
            executor_id,
            epoch,
            kinds,
            hello.capacity,
            peer,
            now_us(),
            state=state,
            credits=max(0, min(hello.free_slots, hello.capacity)) if state is SessionState.LIVE else 0,
        )
        held = list(hello.held_task_ids)
        # Epoch 0 is a process that was never welcomed: whatever was leased to this id was
        # delivered to an earlier process (which may have died of it), so those tasks
        # spend an attempt. A process that reconnects (epoch set) lists all it received;
        # what it does not list never arrived and goes back for free.
        restarted = hello.epoch == 0
        lost = RequeueOutcome()

        def register(connection: Connection) -> int:
            ExecutorRecords.save(
                connection,
                executor_id=executor_id,
                epoch=epoch,
                state=state.value,
                capacity=hello.capacity,
                task_kinds=kinds,
                peer=peer,
                now=session.connected_at_us,
            )
            if restarted:
                nonlocal lost
                lost = self.queue.requeue_lost(connection, executor_id, now_us(), keep=held, restarted=True)
                return lost.requeued + lost.failed
            return self.queue.release_unheld(connection, executor_id, held)

        # Reserved right before the first await, released right before registering: nothing
        # that can raise sits between the reservation and the try, so it cannot leak.
        self._reserve_executor_slot(executor_id)
        try:
            released, moved = await self._write(
                lambda c: (register(c), deadlines.moved_away(c, executor_id, held)), "register executor"
            )
        finally:
            self._connecting[executor_id] -= 1
            if not self._connecting[executor_id]:
                del self._connecting[executor_id]
        # No await between releasing the reservation and registering: the count stays exact.
        if lost.replays_enqueued:
            self._replay_needed.set()
        if restarted and released:
            log.warning(
                "executor %s started anew: %d task(s) its previous process held returned to the queue, "
                "an attempt spent each (it may have died running them)",
                executor_id,
                released,
                extra=logs.fields(executor_id=executor_id),
            )
        previous = self.sessions.put(session)
        if previous is not None:
            previous.close_stream("ABORTED", f"executor {executor_id} connected again on a newer stream")
        try:
            await self._welcome(session, released, moved)
        except BaseException:
            # No stream will serve this session: unregister it now, or it would hold shards
            # and credits (and count against max_executors) until its lease expired.
            await asyncio.shield(self._forget_failed_session(session))
            raise
        return session

    async def _forget_failed_session(self, session: ExecutorSession) -> None:
        """Treat a session whose Hello failed like a stream that closed at once: it gives up its
        shards and credits now; it is forgotten unless it holds tasks, which it keeps (until it
        reconnects or its lease expires and they are requeued) as any disconnected executor does."""
        session.state = SessionState.DISCONNECTED
        session.credits = 0
        try:
            holding = await self._read(
                lambda c: c.execute(
                    select(func.count()).select_from(tasks).where(tasks.c.claimed_by == session.executor_id)
                ).scalar_one()
            )
            if holding == 0:
                self.sessions.discard(session)
            await self._rebalance()
        except Exception:  # disconnected, it holds no shards; lease expiry finishes the job
            log.exception("cleaning up after executor %s failed to connect", session.executor_id)

    async def _welcome(self, session: ExecutorSession, released: int, moved: list[Claim]) -> None:
        """The rest of a Hello once the session is registered: welcome, cancels of the held
        tasks taken back while it was away, leases, wake-ups."""
        executor_id, epoch, state = session.executor_id, session.epoch, session.state
        session.send(
            pb.ClaimTasksResponse(
                welcome=pb.Welcome(
                    epoch=epoch,
                    heartbeat_interval=protocol.duration(self.config.heartbeat_interval),
                    lease_ttl=protocol.duration(self.config.lease_ttl),
                    max_batch_size=self.config.max_batch_size,
                    max_payload_bytes=self.config.max_payload_bytes,
                    shard_count=self.shard_count,
                )
            )
        )
        if state is SessionState.DRAINING and epoch != self.epoch:
            reason = f"epoch {epoch} is not the current one ({self.epoch})"
            session.send(pb.ClaimTasksResponse(drain=pb.Drain(epoch=self.epoch, reason=reason)))
        self._send_cancels(moved, "the task was taken back from this executor while it was away", [session])
        log.info(
            "executor %s connected from %s: epoch %d (%s), capacity %d, kinds %s%s",
            executor_id,
            session.peer,
            epoch,
            state.value,
            session.capacity,
            session.pool,
            f", {released} undelivered task(s) returned to the queue" if released else "",
            extra=logs.fields(executor_id=executor_id),
        )
        await self._rebalance()
        if released:
            self._wake_all()

    def _reserve_executor_slot(self, executor_id: str) -> None:
        """Count a newcomer against ``max_executors`` until it is registered.

        The Hello's database write is awaited between the check and the registration;
        without a reservation every Hello arriving meanwhile passed the same check, and
        1,100 simultaneous Hellos were all welcomed against a limit of 1,000.
        """
        if self.sessions.get(executor_id) is None and executor_id not in self._connecting:
            newcomers = sum(1 for other in self._connecting if self.sessions.get(other) is None)
            if len(self.sessions) + newcomers >= self.config.max_executors:
                raise ResourceExhausted(
                    f"{len(self.sessions) + newcomers} executors are connected or connecting, the most "
                    f"this coordinator takes (max_executors); executor {executor_id} was refused"
                )
        self._connecting[executor_id] += 1

    def executor_alive(self, session: ExecutorSession) -> None:
        session.last_seen = time.monotonic()

    def grant_credit(self, session: ExecutorSession, slots: int) -> None:
        session.last_seen = time.monotonic()
        if session.state is not SessionState.LIVE or slots <= 0:
            return
        session.credits = min(session.capacity, session.credits + slots)
        self._dispatch_needed.set()

    async def executor_draining(self, session: ExecutorSession, reason: str) -> None:
        """The executor stops taking work (shutting down); it still reports what it holds."""
        session.last_seen = time.monotonic()
        if session.state is SessionState.LIVE:
            log.info(
                "executor %s is draining: %s",
                session.executor_id,
                reason or "no reason given",
                extra=logs.fields(executor_id=session.executor_id),
            )
            session.state = SessionState.DRAINING
            session.credits = 0
            await self._rebalance()

    async def executor_stream_closed(self, session: ExecutorSession) -> None:
        if self._stopping or self.sessions.get(session.executor_id) is not session:
            return  # shutting down, or replaced by a newer connection of the same executor
        if session.state is SessionState.DISCONNECTED:
            return  # its lease expired: _expire closed the stream and is requeueing its tasks
        was_draining = session.state is SessionState.DRAINING
        # Out of dispatch and the shard leases before any await: nothing more is claimed
        # for a stream nobody reads, whatever the database does next.
        session.state = SessionState.DISCONNECTED
        session.credits = 0
        await self._rebalance()
        holding = await self._read(
            lambda c: c.execute(
                select(func.count()).select_from(tasks).where(tasks.c.claimed_by == session.executor_id)
            ).scalar_one()
        )
        if was_draining and holding == 0:
            self.sessions.discard(session)
            await self._write(
                lambda c: ExecutorRecords.set_state(c, [session.executor_id], "exited"), "executor exit"
            )
            log.info(
                "executor %s drained and left",
                session.executor_id,
                extra=logs.fields(executor_id=session.executor_id),
            )
        else:
            log.warning(
                "executor %s disconnected holding %d task(s); they return to the queue unless it is back "
                "within %.0fs",
                session.executor_id,
                holding,
                self.config.lease_ttl,
                extra=logs.fields(executor_id=session.executor_id),
            )

    async def _rebalance(self) -> None:
        await self._rebalance_leases()

    def _rebalance_leases(self) -> Coroutine[Any, Any, None]:
        """Rebalance the shard leases in memory and tell the executors, now.

        Returns the coroutine that saves the new leases, for the caller to await.
        """
        changed_pools, changed_sessions = self.sessions.rebalance(self.epoch)
        for session in changed_sessions:
            if session.state is not SessionState.DISCONNECTED:
                session.send(pb.ClaimTasksResponse(shards=pb.ShardAssignment(shards=sorted(session.shards))))
        if changed_sessions:
            self._dispatch_needed.set()
        return self._save_leases(changed_pools)

    async def _save_leases(self, changed_pools: dict[str, dict[int, str]]) -> None:
        if not changed_pools:
            return
        now = now_us()

        def persist(connection: Connection) -> None:
            for pool, assignment in changed_pools.items():
                ExecutorRecords.save_leases(connection, pool, assignment, now)

        try:
            await self._write(persist, "save leases")
        except ConveyorError as error:  # the in-memory leases are authoritative
            log.warning("could not save shard leases: %s", error)

    async def record_results(self, executor_id: str, results: Sequence[ReportedResult]) -> list[Disposition]:
        outcome = await self._write(
            functools.partial(self.queue.record, executor_id=executor_id, results=results, now=now_us()),
            "record results",
        )
        session = self.sessions.get(executor_id)
        if session is not None:
            session.last_seen = time.monotonic()
        for disposition in outcome.dispositions:
            if disposition is Disposition.ACCEPTED:
                self.stats.results_accepted += 1
            elif disposition is Disposition.DUPLICATE:
                self.stats.results_duplicate += 1
            else:
                self.stats.results_stale += 1
        self.metrics.recorded(outcome)
        if outcome.replays_enqueued:
            self._replay_needed.set()
        self._retry_alarm.request(outcome.next_retry_at)
        return outcome.dispositions

    # --------------------------------------------------------------------- admin

    async def fail_pending_tasks(self, shards: Collection[int] | None, limit: int, reason: str) -> int:
        self._check_shards(shards)
        validation.reason(reason)
        failed, replays = await self._write_revoking(
            functools.partial(
                self.queue.fail_pending,
                shards=shards,
                limit=limit,
                reason=reason or "force-failed by an operator (FailPendingTasks)",
                now=now_us(),
            ),
            "fail pending tasks",
            "the task was force-failed by an operator (FailPendingTasks)",
        )
        if replays:
            self._replay_needed.set()
        log.warning("operator force-failed %d pending task(s) on %s", failed, _describe_shards(shards))
        return failed

    async def bump_epoch(self, reason: str) -> tuple[int, int]:
        """Start a new epoch; returns it and how many executors were told to drain."""
        validation.reason(reason)
        async with self._membership:
            self.epoch = await self._write(ExecutorRecords.bump_epoch, "bump epoch")
            drained = 0
            for session in self.sessions:
                if session.epoch < self.epoch and session.state is SessionState.LIVE:
                    session.state = SessionState.DRAINING
                    session.credits = 0
                    session.send(
                        pb.ClaimTasksResponse(
                            drain=pb.Drain(epoch=self.epoch, reason=reason or f"epoch {self.epoch} started")
                        )
                    )
                    drained += 1
        await self._rebalance()
        log.warning(
            "epoch bumped to %d: %d executor(s) draining (%s)", self.epoch, drained, reason or "no reason"
        )
        return self.epoch, drained

    async def clear_replay_queue(
        self, shards: Collection[int] | None, limit: int, reason: str
    ) -> tuple[int, int]:
        self._check_shards(shards)
        validation.reason(reason)
        cleared, cancelled = await self._write(
            functools.partial(
                self.replays.clear,
                shards=shards,
                limit=limit,
                reason=reason or "replay queue cleared by an operator",
                now=now_us(),
            ),
            "clear replay queue",
        )
        self._count_finished(WorkflowStatus.CANCELLED, cancelled)
        log.warning("operator cleared %d replay-queue entries on %s", cleared, _describe_shards(shards))
        return cleared, cancelled

    async def clear_task_queue(
        self, shards: Collection[int] | None, limit: int, reason: str
    ) -> tuple[int, int]:
        self._check_shards(shards)
        validation.reason(reason)
        cleared, cancelled = await self._write_revoking(
            functools.partial(
                self.queue.clear,
                shards=shards,
                limit=limit,
                reason=reason or "task queue cleared by an operator",
                now=now_us(),
            ),
            "clear task queue",
            "the task queue was cleared by an operator (ClearTaskQueue)",
        )
        self._count_finished(WorkflowStatus.CANCELLED, cancelled)
        log.warning("operator cleared %d task(s) on %s", cleared, _describe_shards(shards))
        return cleared, cancelled

    async def cancel_workflows(
        self, selection: WorkflowSelection, limit: int, dry_run: bool, reason: str
    ) -> tuple[int, int, list[str]]:
        """Cancel the running workflows ``selection`` holds, oldest first, in batches.

        Returns (matched, cancelled, the oldest matched ids). Only workflows started
        before the call count, so a steady stream of new starts cannot keep it going.
        """
        self._check_shards(selection.shards)
        validation.reason(reason)
        if limit < 0:
            raise InvalidArgument(f"limit must not be negative (0 means no limit), not {limit}")
        started_before = now_us()
        if selection.started_before is not None:
            started_before = min(started_before, selection.started_before)
        selection = WorkflowSelection(
            selection.shards, selection.name, started_before, selection.started_after
        )
        matched, sample = await self._read(
            functools.partial(
                Workflows.count_selected, selection=selection, limit=limit, sample_size=BULK_CANCEL_SAMPLE
            ),
            snapshot=True,
        )
        if dry_run or not matched:
            return matched, 0, sample
        cancelled = 0
        while limit == 0 or cancelled < limit:
            batch = BULK_CANCEL_BATCH if limit == 0 else min(BULK_CANCEL_BATCH, limit - cancelled)
            ids = await self._write_revoking(
                functools.partial(
                    Workflows.cancel_selected,
                    selection=selection,
                    limit=batch,
                    reason=reason or "cancelled by an operator (CancelWorkflows)",
                    now=now_us(),
                ),
                "cancel workflows",
                "the workflow was cancelled by an operator (CancelWorkflows)",
            )
            cancelled += len(ids)
            self._count_finished(WorkflowStatus.CANCELLED, len(ids))
            if len(ids) < batch:
                break
        log.warning(
            "operator cancelled %d running workflow(s) matching name=%s on %s",
            cancelled,
            selection.name or "any",
            _describe_shards(selection.shards),
        )
        return matched, cancelled, sample

    def _check_shards(self, shards: Collection[int] | None) -> None:
        for shard in shards or ():
            if not 0 <= shard < self.shard_count:
                raise InvalidArgument(f"shard {shard} does not exist; shards are 0..{self.shard_count - 1}")

    async def diagnose(self, max_violations: int, *, check_invariants: bool = True) -> DiagnoseReport:
        """Queue depths, executors and workflow counts; the invariant checks (the costly part) too,
        unless ``check_invariants`` is false."""
        now = now_us()
        names = self.registry.names()

        def query(connection: Connection) -> tuple[Any, ...]:
            claimed: dict[str, int] = dict(
                connection.execute(
                    select(tasks.c.claimed_by, func.count())
                    .where(tasks.c.claimed_by.is_not(None))
                    .group_by(tasks.c.claimed_by)
                ).all()
            )
            return (
                diagnosis.shard_depths(connection, now),
                (
                    diagnosis.invariant_violations(connection, names, max_violations or 20)
                    if check_invariants
                    else []
                ),
                Workflows.count_by_status(connection),
                claimed,
            )

        depths, violations, by_status, claimed = await self._read(query, snapshot=True)
        shards = [
            depths.get(shard) or ShardDepth(shard, 0, 0, 0, None, 0) for shard in range(self.shard_count)
        ]
        monotonic_now = time.monotonic()
        executors = [
            ExecutorView(session, claimed.get(session.executor_id, 0), monotonic_now - session.last_seen)
            for session in sorted(self.sessions, key=lambda s: s.executor_id)
        ]
        return DiagnoseReport(
            epoch=self.epoch,
            shard_count=self.shard_count,
            shards=shards,
            replay_queue_depth=sum(depth.replay_depth for depth in shards),
            executors=executors,
            violations=violations,
            workflows_by_status=by_status,
            rejected_stale_results=self.stats.results_stale,
            generated_at=now,
        )

    # --------------------------------------------------------------------- loops

    async def _replay_loop(self) -> None:
        limit = self.config.replay_batch_size
        while True:
            await self._replay_needed.wait()
            self._replay_needed.clear()
            while True:
                outcome = await self._replay_batch(limit)
                self.stats.replays += outcome.replayed
                self.metrics.replayed(outcome)
                for status, count in outcome.finished.items():
                    self._count_finished(status, count)
                self._wake_holders(outcome.task_shards)
                self._timer_alarm.request(outcome.next_wake_at)
                if outcome.taken + outcome.left < limit:
                    if outcome.left:
                        self._replay_needed.set()  # changed while replaying: replay the new state
                    break

    async def _replay_batch(self, limit: int) -> ReplayBatchOutcome:
        """Read what is due, run the workflow code off the writer, apply the outcomes in a short write."""
        due = await self._read(lambda c: self.replays.due(c, limit), snapshot=True)
        if not due:
            return ReplayBatchOutcome()
        now = now_us()
        calls = [
            ReplayCall(
                item.workflow_id, functools.partial(self.replays.replay_one, item, now), item.trace_context
            )
            for item in due
            if item.replayable
        ]
        results = await self.replay_runner.run(calls)
        outcomes = {call.workflow_id: result for call, result in zip(calls, results, strict=True)}
        return await self._write(lambda c: self.replays.apply(c, due, outcomes, now), "replay")

    async def _dispatch_loop(self) -> None:
        while True:
            await self._dispatch_needed.wait()
            self._dispatch_needed.clear()
            wanting = [
                session
                for session in self.sessions
                if session.state is SessionState.LIVE
                and session.epoch == self.epoch
                and session.credits > 0
                and session.maybe_work
                and session.shards
            ]
            if not wanting:
                continue
            plan = [(s.executor_id, s.shards, s.task_kinds, s.credits) for s in wanting]
            claimed_at = now_us()
            claims = await self._write(functools.partial(self._claim_all, plan=plan, now=claimed_at), "claim")
            orphaned: list[tuple[str, list[int]]] = []
            for session, (_id, _shards, _kinds, wanted), claimed in zip(wanting, plan, claims, strict=True):
                if len(claimed) < wanted:
                    session.maybe_work = False
                if not claimed:
                    continue
                if (
                    self.sessions.get(session.executor_id) is not session
                    or session.state is not SessionState.LIVE
                ):
                    orphaned.append((session.executor_id, [task.task_id for task in claimed]))
                    continue
                self.stats.tasks_claimed += len(claimed)
                self.metrics.claimed(claimed, claimed_at)
                session.credits -= len(claimed)
                size = self.config.max_batch_size
                for start in range(0, len(claimed), size):
                    batch = [protocol.task_to_wire(task) for task in claimed[start : start + size]]
                    session.send(pb.ClaimTasksResponse(tasks=pb.TaskBatch(tasks=batch)))
                if session.credits > 0 and session.maybe_work:
                    self._dispatch_needed.set()
            if orphaned:
                await self._release(orphaned)

    def _claim_all(
        self, connection: Connection, plan: list[tuple[str, frozenset[int], frozenset[str], int]], now: int
    ) -> list[list[ClaimedTask]]:
        """Each executor's oldest tasks from its own shards; if those run dry, the oldest of any shard.

        Leased shards keep every executor busy with its own share in FIFO order; without
        the fallback, an executor whose shards happened to hash fewer workflows would idle
        while another's backlog waits (at 20,000 workflows on 10 executors that unevenness
        stretched the span by 8%). Taking another shard's task is safe: ownership and
        fencing are per task, and the shard's holder simply does not get it.
        """
        claims = []
        for executor_id, shards, kinds, wanted in plan:
            claimed = self.queue.claim(connection, executor_id, shards, kinds, wanted, now)
            if len(claimed) < wanted:
                claimed += self.queue.claim(connection, executor_id, None, kinds, wanted - len(claimed), now)
            claims.append(claimed)
        return claims

    async def _release(self, orphaned: list[tuple[str, list[int]]]) -> None:
        """Give back tasks claimed for an executor that went away before they were sent."""

        def release(connection: Connection) -> None:
            for executor_id, ids in orphaned:
                connection.execute(
                    update(tasks)
                    .where(tasks.c.claimed_by == executor_id, tasks.c.id.in_(ids))
                    .values(claimed_by=None, claimed_at=None)
                )

        await self._write(release, "release")
        self._wake_all()

    async def _timer_loop(self) -> None:
        while True:
            await self._timer_due.wait()
            self._timer_due.clear()
            fired, replays = await self._write(lambda c: self.timers.fire_due(c, now_us()), "fire timers")
            if replays:
                self._replay_needed.set()
            if fired:
                self._timer_due.set()  # there may be more due than one batch held
                continue
            self._timer_alarm.request(await self._read(Timers.next_wake_at))

    async def _retry_loop(self) -> None:
        """Offer work when a task's retry backoff ends, then wait for the next one."""
        while True:
            await self._retry_due.wait()
            self._retry_due.clear()
            self._wake_all()
            self._retry_alarm.request(
                await self._read(functools.partial(self.queue.earliest_delayed, now=now_us()))
            )

    async def _lease_loop(self) -> None:
        ttl = self.config.lease_ttl
        last_persist = time.monotonic()
        while True:
            await asyncio.sleep(min(0.5, ttl / 4))
            monotonic_now = time.monotonic()
            for session in self.sessions:
                if monotonic_now - session.last_seen > ttl:
                    await self._expire(session)
            if monotonic_now - last_persist >= HEARTBEAT_PERSIST_INTERVAL:
                last_persist = monotonic_now
                wall_now = now_us()
                seen = {
                    s.executor_id: wall_now - int((monotonic_now - s.last_seen) * 1e6)
                    for s in self.sessions
                    if s.state is not SessionState.DISCONNECTED
                }
                await self._write(
                    functools.partial(ExecutorRecords.record_heartbeats, last_seen=seen), "heartbeats"
                )

    async def _expire(self, session: ExecutorSession) -> None:
        """The executor missed its lease: its tasks go back to the queue, its shards to others.

        The session is forgotten only once the requeue has committed: if the write fails
        (database down), the session stays registered, out of the leases, and the lease
        loop expires it again on its next round, so its tasks are not stranded.
        """
        if self.sessions.get(session.executor_id) is not session:
            return  # it reconnected (a new session) since the lease loop looked
        if session.executor_id in self._connecting:
            # Its Hello's registration is already in the writer's queue: requeueing now would
            # run after it and take the tasks the new session still holds. The new session
            # replaces this one; if the registration fails, the next round expires this one.
            return
        session.close_stream(
            "ABORTED",
            f"no heartbeat for {self.config.lease_ttl:.0f}s: the lease expired and the tasks held went "
            "back to the queue; reconnect (what it still runs is cancelled)",
        )
        session.state = SessionState.DISCONNECTED
        session.credits = 0
        save_leases = self._rebalance_leases()

        def requeue(connection: Connection) -> Any:
            ExecutorRecords.set_state(connection, [session.executor_id], "expired")
            return self.queue.requeue_lost(connection, session.executor_id, now_us())

        # Submitted before anything else awaits: a reconnect of the same executor from now
        # on registers after this requeue, so it cannot lose tasks it holds to it.
        try:
            outcome = await self._write(requeue, "expire lease")
        finally:
            await save_leases
        self.sessions.discard(session)
        self.stats.leases_expired += 1
        log.warning(
            "executor %s lost its lease (no heartbeat for %.0fs): %d task(s) back in the queue, %d failed "
            "after their last attempt",
            session.executor_id,
            self.config.lease_ttl,
            outcome.requeued,
            outcome.failed,
            extra=logs.fields(executor_id=session.executor_id),
        )
        self._wake_holders(outcome.shards)
        if outcome.replays_enqueued:
            self._replay_needed.set()

    async def _deadline_loop(self) -> None:
        """Take back attempts past their start-to-close deadline (``tasks.deadline_at``).

        Level-triggered: each pass reads the earliest deadline from the database, so a
        pass that fails (the supervisor restarts the loop) loses nothing, and a deadline
        stamped by any claim is seen within DEADLINE_CHECK_INTERVAL without a wake-up.
        """
        while True:
            now = now_us()
            due = await self._read(deadlines.earliest_deadline)
            if due is not None and due <= now:
                outcome = await self._write(
                    functools.partial(
                        deadlines.expire_overdue,
                        dialect=self.database.dialect,
                        now=now,
                        default_timeout=self.config.default_task_timeout,
                        grace=self.config.task_deadline_grace,
                    ),
                    "expire deadlines",
                )
                self._deadlines_expired(outcome)
                if outcome.revoked:
                    continue  # more may be due: read again at once
            wait = DEADLINE_CHECK_INTERVAL if due is None else (due - now) / 1e6
            await asyncio.sleep(min(DEADLINE_CHECK_INTERVAL, max(0.01, wait)))

    def _deadlines_expired(self, outcome: ExpiryOutcome) -> None:
        if not outcome.revoked:
            return
        self.stats.deadlines_expired += len(outcome.revoked)
        log.warning(
            "%d attempt(s) passed their start-to-close deadline without a result: %d retried, %d failed "
            "after their last attempt (the executor's handler or call may be hung; see ExplainWorkflow)",
            len(outcome.revoked),
            outcome.retried,
            outcome.failed,
        )
        self._send_cancels(outcome.revoked, "the attempt passed its start-to-close deadline")
        self._retry_alarm.request(outcome.next_retry_at)
        self._wake_holders(outcome.shards)
        if outcome.replays_enqueued:
            self._replay_needed.set()

    async def _sweep_loop(self) -> None:
        last_rearm = time.monotonic()
        while True:
            await asyncio.sleep(SAFETY_SWEEP_INTERVAL)
            self._wake_all()
            if time.monotonic() - last_rearm >= REARM_INTERVAL:
                last_rearm = time.monotonic()
                self._rearm()


def _describe_shards(shards: Collection[int] | None) -> str:
    return "all shards" if shards is None else "shard(s) " + ",".join(map(str, sorted(shards)))
