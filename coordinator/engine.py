"""The coordinator: its parts wired together, and their lifecycle (start, recover, supervise, stop).

The path of one step, each arrow one write transaction on the writer thread::

    result batch ──record──▶ replay queue ──replay──▶ new tasks ──claim──▶ executor

* ``record`` (RecordResults, :mod:`.dispatch`) finishes steps and enqueues a replay for
  each workflow with a step finished (a workflow advances on any completion), then wakes
  the replay loop;
* the replay loop (:mod:`.replay_service`) drains the replay queue oldest workflow first,
  starting the next steps or finishing workflows, then wakes the executors whose shards
  got tasks;
* the dispatch loop (:mod:`.dispatch`) claims tasks for every executor with free credits
  and work on its shards, and pushes them down its stream.

Nothing waits on a timer on that path. Timers exist only for what is due later
(retry backoffs, ``ctx.sleep``), for lease expiry (:mod:`.membership`), and as a
once-a-second safety sweep. Everything durable is in the database; the in-memory state
(sessions, leases, credits) is rebuilt from executors reconnecting after a restart.

The parts share one :class:`~.context.EngineContext`; :class:`Coordinator` keeps the
methods the gRPC servicers call and hands each to its part.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Collection, Coroutine, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

from conveyor.errors import ConveyorError
from conveyor.v1 import executor_service_pb2 as pb
from conveyor.workflow import WorkflowRegistry

from . import explain, validation
from .admin import AdminOperations
from .clock import CreationClock, now_us
from .config import CoordinatorConfig
from .context import EngineContext
from .dispatch import Dispatcher
from .membership import Membership
from .metrics import CoordinatorMetrics
from .model import WorkflowStatus
from .replay_runner import ReplayRunner
from .replay_service import ReplayService
from .reports import CoordinatorStats, DiagnoseReport, ExecutorView
from .retention import PurgeOutcome, Retention
from .sessions import ExecutorSession, SessionRegistry, SessionState
from .store import (
    Children,
    Database,
    Disposition,
    ExecutorRecords,
    ReplayQueue,
    ReportedResult,
    Signals,
    SignalSent,
    Started,
    TaskQueue,
    Timers,
    WorkflowRecord,
    Workflows,
    WorkflowSelection,
    Writer,
    holdings,
)
from .store.leadership import Leadership
from .store.ownership import DatabaseLock
from .store.queue import TaskDeadlines
from .store.reader import Reader
from .watch import WatchEvent
from .workflow_api import WorkflowApi
from .workflow_cache import WorkflowCache

__all__ = ["Coordinator", "CoordinatorStats", "DiagnoseReport", "ExecutorView"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long stop() waits for the background loops to end once cancelled (they end at once).
LOOP_STOP_TIMEOUT = 10.0
#: How often idle executors are offered work even without a wake-up, in case one was missed.
SAFETY_SWEEP_INTERVAL = 1.0
#: How often the sweep re-arms every loop's wake-up (replays, timers, retry backoffs), so
#: work left by a lost wake-up (a failed write, a crashed loop) is found without new traffic.
REARM_INTERVAL = 5.0


class Coordinator:
    def __init__(self, config: CoordinatorConfig, registry: WorkflowRegistry) -> None:
        self.config = config
        self.registry = registry
        self.database = self._open_database()
        self._started_before = False
        self.stats = CoordinatorStats()
        # The engine reports its events to an observer; the metrics are the one it has.
        self.metrics = CoordinatorMetrics(self.stats)
        self._loops: list[asyncio.Task[None]] = []
        #: Failures of each background loop since start-up (each one re-armed every loop).
        self._loop_failures: dict[str, int] = {}

    def _open_database(self) -> Database:
        # A write waiting on another process's SQLite lock must not outlast the retry deadline,
        # or a locked file holds every unit far past the moment it should fail as Unavailable.
        return Database(
            self.config.database_url,
            sqlite_synchronous=self.config.sqlite_synchronous,
            sqlite_busy_timeout=min(30.0, self.config.database_retry_deadline),
        )

    # ------------------------------------------------------------------- wiring

    @property
    def ctx(self) -> EngineContext:
        return self._ctx

    @property
    def epoch(self) -> int:
        return self._ctx.epoch if hasattr(self, "_ctx") else 0

    @property
    def shard_count(self) -> int:
        return self._ctx.shard_count if hasattr(self, "_ctx") else 0

    @property
    def sessions(self) -> SessionRegistry:
        return self._ctx.sessions

    @property
    def writer(self) -> Writer:
        return self._ctx.writer

    @property
    def reader(self) -> Reader:
        return self._ctx.reader

    @property
    def workflows(self) -> Workflows:
        return self._ctx.workflows

    @property
    def queue(self) -> TaskQueue:
        return self._ctx.queue

    @property
    def replays(self) -> ReplayQueue:
        return self._ctx.replays

    @property
    def replay_runner(self) -> ReplayRunner:
        return self._ctx.replay_runner

    # ----------------------------------------------------------------- lifecycle

    async def start(self, leadership: Leadership | None = None) -> None:
        """Recover and serve. With ``leadership`` (PostgreSQL, several coordinators): this one
        was elected, and every write checks it still leads; a coordinator that was deposed
        and elected again starts here again. Without: the database's exclusive lock comes
        first, before even migrating: a second coordinator would requeue the first one's
        running tasks (see store/ownership.py)."""
        if self._started_before:
            # A new term: a deposed leader's engines may hang on a dead connection.
            self.database = self._open_database()
        self._started_before = True
        self._loops = []
        if leadership is not None:
            self.lock: DatabaseLock | Leadership = leadership
        else:
            self.lock = DatabaseLock(self.database.dialect)
            await asyncio.to_thread(self.lock.acquire)
        try:
            await self._start(leadership)
        except BaseException:
            if leadership is None:
                self.lock.release()
            raise

    async def _start(self, leadership: Leadership | None) -> None:
        await asyncio.to_thread(self.database.migrate)
        if isinstance(self.lock, DatabaseLock):
            await asyncio.to_thread(self.database.record_holder, self.lock)
        facts = await asyncio.to_thread(self.database.open_cluster, self.config.shards)
        dialect = self.database.dialect
        # One clock for roots and children: creation times stay unique (list pages key on them).
        clock = CreationClock(facts.last_created_at)
        writer = Writer(
            self.database.writer,
            group_commit_window=self.config.group_commit_window,
            retry_deadline=self.config.database_retry_deadline,
            guard=self.lock.check,
            fence=None if leadership is None else leadership.fence,
        )
        cache = WorkflowCache(
            self.config.workflow_cache_size,
            self.config.workflow_cache_mib * 1024 * 1024,
            stats=self.stats.workflow_cache,
        )
        self._ctx = EngineContext(
            config=self.config,
            registry=self.registry,
            database=self.database,
            stats=self.stats,
            observer=self.metrics,
            epoch=facts.epoch,
            shard_count=facts.shard_count,
            workflows=Workflows(facts.shard_count, clock),
            queue=TaskQueue(
                dialect,
                order=self.config.claim_order,
                shard_count=facts.shard_count,
                deadlines=TaskDeadlines(self.config.default_task_timeout, self.config.task_deadline_grace),
            ),
            replays=ReplayQueue(
                dialect,
                self.registry,
                children=Children(facts.shard_count, clock),
                max_payload_bytes=self.config.max_payload_bytes,
                cache=cache,
            ),
            timers=Timers(dialect),
            signals=Signals(dialect),
            sessions=SessionRegistry(facts.shard_count),
            writer=writer,
            reader=Reader(self.database, retry_deadline=self.config.database_retry_deadline),
            replay_runner=ReplayRunner(self.config.replay_timeout, on_abandon=cache.clear),
        )
        self.membership = Membership(self._ctx)
        self.dispatcher = Dispatcher(self._ctx)
        self.replay_service = ReplayService(self._ctx)
        self.admin = AdminOperations(self._ctx)
        self.workflow_api = WorkflowApi(self._ctx)
        self.retention = Retention(self._ctx)
        writer.start()
        await self._recover()
        # Named as before the split: tests and health reports find a loop by its name.
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "_replay_loop": self.replay_service.replay_loop,
            "_dispatch_loop": self.dispatcher.dispatch_loop,
            "_timer_loop": self.replay_service.timer_loop,
            "_retry_loop": self.dispatcher.retry_loop,
            "_lease_loop": self.membership.lease_loop,
            "_sweep_loop": self._sweep_loop,
            "_deadline_loop": self.dispatcher.deadline_loop,
            "_watch_loop": self._ctx.watches.pump_loop,
        }
        if self.config.retention is not None:
            loops["_retention_loop"] = self.retention.retention_loop
        for name, loop in loops.items():
            self._loops.append(asyncio.create_task(self._supervised(name, loop), name=name))
        log.info(
            "coordinator ready: %s, %d shards, epoch %d, workflows: %s",
            self.database.dialect.display_url(),
            self.shard_count,
            self.epoch,
            ", ".join(self.registry.names()) or "none",
        )

    def close_executor_streams(self) -> None:
        """First step of a shutdown: end every executor's stream; they reconnect to the next coordinator."""
        self._ctx.stopping = True
        self._ctx.watches.close()
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
        self._ctx.timer_alarm.cancel()
        self._ctx.retry_alarm.cancel()
        self.replay_runner.stop()
        await self.writer.stop()
        await asyncio.to_thread(self.database.dispose)
        if isinstance(self.lock, DatabaseLock):
            await asyncio.to_thread(self.lock.release)

    async def _recover(self) -> None:
        """Pick up where a previous coordinator process left off.

        Executors that held tasks get one lease period to reconnect and report;
        afterwards their tasks go back to the queue. Pending replays and timers run.
        """

        def holders(connection: Connection) -> list[str]:
            ExecutorRecords.clear_leases(connection)
            return holdings.holders(connection)

        for executor_id in await self.writer.run(holders, "recover"):
            ghost = ExecutorSession(
                executor_id, self.epoch, frozenset(), 0, "", now_us(), state=SessionState.DISCONNECTED
            )
            self.sessions.put(ghost)
        self._ctx.replay_needed.set()
        self._ctx.timer_due.set()
        self._ctx.retry_due.set()

    async def _supervised(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
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
                log.warning("%s: %s; retrying in 1s", name, error)
            except Exception:
                log.exception("%s crashed; restarting it in 1s", name)
            self._loop_failures[name] = self._loop_failures.get(name, 0) + 1
            await asyncio.sleep(1.0)
            self._ctx.rearm()

    async def _sweep_loop(self) -> None:
        last_rearm = time.monotonic()
        while True:
            await asyncio.sleep(SAFETY_SWEEP_INTERVAL)
            self._ctx.wake_all()
            if time.monotonic() - last_rearm >= REARM_INTERVAL:
                last_rearm = time.monotonic()
                self._ctx.rearm()

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
            if task.done() and not self._ctx.stopping:
                reason = "cancelled" if task.cancelled() else repr(task.exception())
                problems.append(
                    f"background loop {task.get_name()} has ended ({reason}); restart the coordinator"
                )
        if problems:
            return False, "; ".join(problems)
        return True, "serving"

    # ------------------------------------------------------------------ reads

    async def _write(self, unit: Callable[[Connection], T], label: str) -> T:
        return await self._ctx.write(unit, label)

    async def _read(self, query: Callable[[Connection], T], *, snapshot: bool = False) -> T:
        return await self._ctx.read(query, snapshot=snapshot)

    async def read(self, query: Callable[[Connection], T]) -> T:
        """Run the read-only ``query`` in one snapshot on the reader pool (for the status page)."""
        return await self._ctx.read(query, snapshot=True)

    # ---------------------------------------------------------- workflows (WorkflowApi)

    async def start_workflows(
        self, requests: Sequence[tuple[str, str, str]], trace_contexts: Sequence[str | None] = ()
    ) -> list[Started]:
        return await self.workflow_api.start_workflows(requests, trace_contexts)

    async def get_workflow(self, workflow_id: str, *, include_steps: bool) -> WorkflowRecord:
        return await self.workflow_api.get_workflow(workflow_id, include_steps=include_steps)

    async def list_workflows(
        self,
        *,
        statuses: Collection[WorkflowStatus],
        name: str,
        page_size: int,
        page_token: str,
        newest_first: bool,
    ) -> tuple[list[WorkflowRecord], str | None]:
        return await self.workflow_api.list_workflows(
            statuses=statuses,
            name=name,
            page_size=page_size,
            page_token=page_token,
            newest_first=newest_first,
        )

    async def count_workflows(self, name: str) -> dict[str, int]:
        return await self.workflow_api.count_workflows(name)

    async def cancel_workflow(self, workflow_id: str, reason: str) -> WorkflowRecord:
        return await self.workflow_api.cancel_workflow(workflow_id, reason)

    async def explain_workflow(self, workflow_id: str) -> explain.Explanation:
        return await self.workflow_api.explain_workflow(workflow_id)

    def watch_workflow(self, workflow_id: str) -> AsyncGenerator[WatchEvent, None]:
        """The workflow's snapshot, then its changes until it finishes (see :mod:`.watch`)."""
        validation.identifier(workflow_id, "workflow_id")
        return self._ctx.watches.watch(workflow_id)

    async def signal_workflow(
        self, workflow_id: str, name: str, payload_json: str, idempotency_key: str
    ) -> SignalSent:
        return await self.workflow_api.signal_workflow(workflow_id, name, payload_json, idempotency_key)

    def executor_presences(self) -> list[explain.ExecutorPresence]:
        return self.workflow_api.executor_presences()

    # ---------------------------------------------------------- executors (Membership, Dispatcher)

    async def connect_executor(self, hello: pb.Hello, peer: str) -> ExecutorSession:
        return await self.membership.connect_executor(hello, peer)

    def executor_alive(self, session: ExecutorSession) -> None:
        self.membership.executor_alive(session)

    def grant_credit(self, session: ExecutorSession, slots: int) -> None:
        self.membership.grant_credit(session, slots)

    async def executor_draining(self, session: ExecutorSession, reason: str) -> None:
        await self.membership.executor_draining(session, reason)

    async def executor_stream_closed(self, session: ExecutorSession) -> None:
        await self.membership.executor_stream_closed(session)

    async def record_results(self, executor_id: str, results: Sequence[ReportedResult]) -> list[Disposition]:
        return await self.dispatcher.record_results(executor_id, results)

    # ---------------------------------------------------------- admin (AdminOperations)

    async def fail_pending_tasks(self, shards: Collection[int] | None, limit: int, reason: str) -> int:
        return await self.admin.fail_pending_tasks(shards, limit, reason)

    async def bump_epoch(self, reason: str) -> tuple[int, int]:
        return await self.membership.bump_epoch(reason)

    async def clear_replay_queue(
        self, shards: Collection[int] | None, limit: int, reason: str
    ) -> tuple[int, int]:
        return await self.admin.clear_replay_queue(shards, limit, reason)

    async def clear_task_queue(
        self, shards: Collection[int] | None, limit: int, reason: str
    ) -> tuple[int, int]:
        return await self.admin.clear_task_queue(shards, limit, reason)

    async def cancel_workflows(
        self, selection: WorkflowSelection, limit: int, dry_run: bool, reason: str
    ) -> tuple[int, int, list[str]]:
        return await self.admin.cancel_workflows(selection, limit, dry_run, reason)

    async def diagnose(self, max_violations: int, *, check_invariants: bool = True) -> DiagnoseReport:
        return await self.admin.diagnose(max_violations, check_invariants=check_invariants)

    async def purge_workflows(
        self, finished_before: int, statuses: Collection[WorkflowStatus], limit: int, dry_run: bool
    ) -> PurgeOutcome:
        return await self.retention.purge_workflows(finished_before, statuses, limit, dry_run)
