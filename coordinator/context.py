"""What the parts of the engine share: the stores, the writer and reader, the executor
sessions, the wake-ups that connect the loops, and the counters.

One per running coordinator, built once the database is open. The parts
(:mod:`.membership`, :mod:`.dispatch`, :mod:`.replay_service`, :mod:`.admin`,
:mod:`.workflow_api`) each hold it and never each other: what one part causes another
to do goes through a wake-up here (``replay_needed``, ``dispatch_needed``, ...), so each
loop can be read alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import TypeVar

from sqlalchemy.engine import Connection

from conveyor import logs
from conveyor.v1 import executor_service_pb2 as pb
from conveyor.workflow import WorkflowRegistry

from .alarm import Alarm
from .config import CoordinatorConfig
from .model import WorkflowStatus
from .observer import EngineObserver
from .replay_runner import ReplayRunner
from .reports import CoordinatorStats
from .sessions import ExecutorSession, SessionRegistry, SessionState
from .store import Database, ReplayQueue, Signals, TaskQueue, Timers, Workflows, Writer, deadlines
from .store.deadlines import Claim
from .store.reader import Reader
from .store.wakeups import Wakeups, take_wakeups
from .watch import WatchHub

log = logging.getLogger(__name__)

T = TypeVar("T")


class EngineContext:
    """The state every part of the engine reads, and the few actions they all take
    (write, read, revoke and cancel attempts, wake a loop)."""

    def __init__(
        self,
        *,
        config: CoordinatorConfig,
        registry: WorkflowRegistry,
        database: Database,
        stats: CoordinatorStats,
        observer: EngineObserver,
        epoch: int,
        shard_count: int,
        workflows: Workflows,
        queue: TaskQueue,
        replays: ReplayQueue,
        timers: Timers,
        signals: Signals,
        sessions: SessionRegistry,
        writer: Writer,
        reader: Reader,
        replay_runner: ReplayRunner,
    ) -> None:
        self.config = config
        self.registry = registry
        self.database = database
        self.stats = stats
        self.observer = observer
        #: The current epoch: executors of an older one drain (changed by an epoch bump).
        self.epoch = epoch
        self.shard_count = shard_count
        self.workflows = workflows
        self.queue = queue
        self.replays = replays
        self.timers = timers
        self.signals = signals
        self.sessions = sessions
        self.writer = writer
        self.reader = reader
        self.replay_runner = replay_runner
        #: Set once a shutdown began: streams closing then are not executors leaving.
        self.stopping = False
        # The wake-ups, level-triggered: each loop clears its event before doing the work.
        self.replay_needed = asyncio.Event()
        self.dispatch_needed = asyncio.Event()
        self.timer_due = asyncio.Event()
        self.retry_due = asyncio.Event()
        self.timer_alarm = Alarm(self.timer_due.set)
        self.retry_alarm = Alarm(self.retry_due.set)
        #: WatchWorkflow's watchers: every part that commits a change to a workflow tells it.
        self.watches = WatchHub(reader, config.max_watchers)

    async def write(self, unit: Callable[[Connection], T], label: str) -> T:
        """Run ``unit`` in a write transaction, then act on what it noted for after its commit
        (:mod:`conveyor.coordinator.store.wakeups`): wake the replay loop, forget cancelled runs."""

        def noting(connection: Connection) -> tuple[T, Wakeups]:
            take_wakeups(connection)  # left by a unit that failed before this one: not this one's
            return unit(connection), take_wakeups(connection)

        result, wakeups = await self.writer.run(noting, label)
        if wakeups.cancelled:
            self.workflows_cancelled(wakeups.cancelled)
        elif wakeups.replays_enqueued:
            self.replay_needed.set()
        return result

    def workflows_cancelled(self, workflow_ids: Collection[str]) -> None:
        """These workflows were cancelled (committed): their watchers are told, and their cached runs
        dropped, so that no memory is held for them and no later lookup can meet them."""
        self.watches.changed(workflow_ids)
        self.replays.cache.forget(workflow_ids)
        # The runs are closed on the replay runner's thread (closing runs workflow code); the replay
        # loop does it when woken, even with nothing to replay.
        self.replay_needed.set()

    async def read(self, query: Callable[[Connection], T], *, snapshot: bool = False) -> T:
        """Run ``query`` in a read transaction (see :meth:`Reader.run`), riding out database restarts."""
        return await self.reader.run(query, snapshot=snapshot)

    async def write_revoking(
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

        result, revoked = await self.write(run, label)
        self.send_cancels(revoked, reason)
        return result

    def send_cancels(
        self, claims: Collection[Claim], reason: str, sessions: Collection[ExecutorSession] | None = None
    ) -> None:
        """Tell each executor holding one of ``claims`` to stop that attempt (CancelTasks).

        An executor that is not connected is told when it reconnects (:meth:`Membership.connect_executor`
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

    def wake_holders(self, shards: set[int]) -> None:
        for session in self.sessions.holders(shards):
            session.maybe_work = True
        if shards:
            self.dispatch_needed.set()

    def wake_all(self) -> None:
        for session in self.sessions:
            session.maybe_work = True
        self.dispatch_needed.set()

    def rearm(self) -> None:
        """Set every loop's wake-up: each re-checks its work (a no-op when there is none)."""
        self.replay_needed.set()
        self.timer_due.set()
        self.retry_due.set()
        self.wake_all()

    def count_finished(self, status: WorkflowStatus, count: int) -> None:
        self.stats.workflows_finished[status.value] = (
            self.stats.workflows_finished.get(status.value, 0) + count
        )
