"""Which executors are connected: registration (Hello), epochs, shard leases, credits, lease expiry.

The sessions live in memory only (:class:`~conveyor.coordinator.sessions.SessionRegistry`); what
must survive a restart (the tasks each executor holds) is in the database, and executors
reconnecting rebuild the rest.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Any

from sqlalchemy.engine import Connection

from conveyor import logs
from conveyor.errors import ConveyorError, InvalidArgument, ResourceExhausted
from conveyor.v1 import executor_service_pb2 as pb

from . import protocol, validation
from .clock import now_us
from .context import EngineContext
from .sessions import ExecutorSession, SessionState, pool_name
from .store import ExecutorRecords, deadlines, holdings
from .store.deadlines import Claim
from .store.queue import RequeueOutcome

log = logging.getLogger(__name__)

#: How often executors' last heartbeats are copied to the database, for operators.
HEARTBEAT_PERSIST_INTERVAL = 5.0


class Membership:
    """The executor registry: sessions in, sessions out, leases of shards between them."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        #: Executor ids whose Hello passed the max_executors check and is being registered.
        self._connecting: collections.Counter[str] = collections.Counter()
        #: Held by a registration and by an epoch bump from reading the epoch until the
        #: session is in (or the sessions are drained for) it: interleaved, a Hello could
        #: register into the epoch a bump had just ended, and idle there never drained.
        self._membership = asyncio.Lock()

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
        epoch = hello.epoch or self.ctx.epoch
        # An executor that was draining before its stream dropped still is: it gets no new
        # work, but its heartbeats keep the tasks it is finishing leased to it.
        state = SessionState.LIVE if epoch == self.ctx.epoch and not hello.draining else SessionState.DRAINING
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
                lost = self.ctx.queue.requeue_lost(
                    connection, executor_id, now_us(), keep=held, restarted=True
                )
                return lost.requeued + lost.failed
            return self.ctx.queue.release_unheld(connection, executor_id, held)

        # Reserved right before the first await, released right before registering: nothing
        # that can raise sits between the reservation and the try, so it cannot leak.
        self._reserve_executor_slot(executor_id)
        try:
            released, moved = await self.ctx.write(
                lambda c: (register(c), deadlines.moved_away(c, executor_id, held)), "register executor"
            )
        finally:
            self._connecting[executor_id] -= 1
            if not self._connecting[executor_id]:
                del self._connecting[executor_id]
        # No await between releasing the reservation and registering: the count stays exact.
        if restarted and released:
            log.warning(
                "executor %s started anew: %d task(s) its previous process held returned to the queue, "
                "an attempt spent each (it may have died running them)",
                executor_id,
                released,
                extra=logs.fields(executor_id=executor_id),
            )
        previous = self.ctx.sessions.put(session)
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
            holding = await self.ctx.read(
                functools.partial(holdings.held_by, executor_id=session.executor_id)
            )
            if holding == 0:
                self.ctx.sessions.discard(session)
            await self.rebalance()
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
                    heartbeat_interval=protocol.duration(self.ctx.config.heartbeat_interval),
                    lease_ttl=protocol.duration(self.ctx.config.lease_ttl),
                    max_batch_size=self.ctx.config.max_batch_size,
                    max_payload_bytes=self.ctx.config.max_payload_bytes,
                    shard_count=self.ctx.shard_count,
                )
            )
        )
        if state is SessionState.DRAINING and epoch != self.ctx.epoch:
            reason = f"epoch {epoch} is not the current one ({self.ctx.epoch})"
            session.send(pb.ClaimTasksResponse(drain=pb.Drain(epoch=self.ctx.epoch, reason=reason)))
        self.ctx.send_cancels(
            moved, "the task was taken back from this executor while it was away", [session]
        )
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
        await self.rebalance()
        if released:
            self.ctx.wake_all()

    def _reserve_executor_slot(self, executor_id: str) -> None:
        """Count a newcomer against ``max_executors`` until it is registered.

        The Hello's database write is awaited between the check and the registration;
        without a reservation every Hello arriving meanwhile passed the same check, and
        1,100 simultaneous Hellos were all welcomed against a limit of 1,000.
        """
        if self.ctx.sessions.get(executor_id) is None and executor_id not in self._connecting:
            newcomers = sum(1 for other in self._connecting if self.ctx.sessions.get(other) is None)
            if len(self.ctx.sessions) + newcomers >= self.ctx.config.max_executors:
                raise ResourceExhausted(
                    f"{len(self.ctx.sessions) + newcomers} executors are connected or connecting, the most "
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
        self.ctx.dispatch_needed.set()

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
            await self.rebalance()

    async def executor_stream_closed(self, session: ExecutorSession) -> None:
        if self.ctx.stopping or self.ctx.sessions.get(session.executor_id) is not session:
            return  # shutting down, or replaced by a newer connection of the same executor
        if session.state is SessionState.DISCONNECTED:
            return  # its lease expired: expire() closed the stream and is requeueing its tasks
        was_draining = session.state is SessionState.DRAINING
        # Out of dispatch and the shard leases before any await: nothing more is claimed
        # for a stream nobody reads, whatever the database does next.
        session.state = SessionState.DISCONNECTED
        session.credits = 0
        await self.rebalance()
        holding = await self.ctx.read(functools.partial(holdings.held_by, executor_id=session.executor_id))
        if was_draining and holding == 0:
            self.ctx.sessions.discard(session)
            await self.ctx.write(
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
                self.ctx.config.lease_ttl,
                extra=logs.fields(executor_id=session.executor_id),
            )

    async def bump_epoch(self, reason: str) -> tuple[int, int]:
        """Start a new epoch; returns it and how many executors were told to drain."""
        validation.reason(reason)
        async with self._membership:
            self.ctx.epoch = await self.ctx.write(ExecutorRecords.bump_epoch, "bump epoch")
            drained = 0
            for session in self.ctx.sessions:
                if session.epoch < self.ctx.epoch and session.state is SessionState.LIVE:
                    session.state = SessionState.DRAINING
                    session.credits = 0
                    session.send(
                        pb.ClaimTasksResponse(
                            drain=pb.Drain(
                                epoch=self.ctx.epoch, reason=reason or f"epoch {self.ctx.epoch} started"
                            )
                        )
                    )
                    drained += 1
        await self.rebalance()
        log.warning(
            "epoch bumped to %d: %d executor(s) draining (%s)", self.ctx.epoch, drained, reason or "no reason"
        )
        return self.ctx.epoch, drained

    async def rebalance(self) -> None:
        await self.rebalance_leases()

    def rebalance_leases(self) -> Coroutine[Any, Any, None]:
        """Rebalance the shard leases in memory and tell the executors, now.

        Returns the coroutine that saves the new leases, for the caller to await.
        """
        changed_pools, changed_sessions = self.ctx.sessions.rebalance(self.ctx.epoch)
        for session in changed_sessions:
            if session.state is not SessionState.DISCONNECTED:
                session.send(pb.ClaimTasksResponse(shards=pb.ShardAssignment(shards=sorted(session.shards))))
        if changed_sessions:
            self.ctx.dispatch_needed.set()
        return self.save_leases(changed_pools)

    async def save_leases(self, changed_pools: dict[str, dict[int, str]]) -> None:
        if not changed_pools:
            return
        now = now_us()

        def persist(connection: Connection) -> None:
            for pool, assignment in changed_pools.items():
                ExecutorRecords.save_leases(connection, pool, assignment, now)

        try:
            await self.ctx.write(persist, "save leases")
        except ConveyorError as error:  # the in-memory leases are authoritative
            log.warning("could not save shard leases: %s", error)

    async def lease_loop(self) -> None:
        ttl = self.ctx.config.lease_ttl
        last_persist = time.monotonic()
        while True:
            await asyncio.sleep(min(0.5, ttl / 4))
            monotonic_now = time.monotonic()
            for session in self.ctx.sessions:
                if monotonic_now - session.last_seen > ttl:
                    await self.expire(session)
            if monotonic_now - last_persist >= HEARTBEAT_PERSIST_INTERVAL:
                last_persist = monotonic_now
                wall_now = now_us()
                seen = {
                    s.executor_id: wall_now - int((monotonic_now - s.last_seen) * 1e6)
                    for s in self.ctx.sessions
                    if s.state is not SessionState.DISCONNECTED
                }
                await self.ctx.write(
                    functools.partial(ExecutorRecords.record_heartbeats, last_seen=seen), "heartbeats"
                )

    async def expire(self, session: ExecutorSession) -> None:
        """The executor missed its lease: its tasks go back to the queue, its shards to others.

        The session is forgotten only once the requeue has committed: if the write fails
        (database down), the session stays registered, out of the leases, and the lease
        loop expires it again on its next round, so its tasks are not stranded.
        """
        if self.ctx.sessions.get(session.executor_id) is not session:
            return  # it reconnected (a new session) since the lease loop looked
        if session.executor_id in self._connecting:
            # Its Hello's registration is already in the writer's queue: requeueing now would
            # run after it and take the tasks the new session still holds. The new session
            # replaces this one; if the registration fails, the next round expires this one.
            return
        session.close_stream(
            "ABORTED",
            f"no heartbeat for {self.ctx.config.lease_ttl:.0f}s: the lease expired and the tasks held went "
            "back to the queue; reconnect (what it still runs is cancelled)",
        )
        session.state = SessionState.DISCONNECTED
        session.credits = 0
        save_leases = self.rebalance_leases()

        def requeue(connection: Connection) -> Any:
            ExecutorRecords.set_state(connection, [session.executor_id], "expired")
            return self.ctx.queue.requeue_lost(connection, session.executor_id, now_us())

        # Submitted before anything else awaits: a reconnect of the same executor from now
        # on registers after this requeue, so it cannot lose tasks it holds to it.
        try:
            outcome = await self.ctx.write(requeue, "expire lease")
        except BaseException:
            await save_leases
            raise
        # Forgotten as soon as the requeue is visible, before the leases are saved (one more
        # write): anyone who sees its tasks back in the queue no longer sees it.
        self.ctx.sessions.discard(session)
        await save_leases
        self.ctx.stats.leases_expired += 1
        log.warning(
            "executor %s lost its lease (no heartbeat for %.0fs): %d task(s) back in the queue, %d failed "
            "after their last attempt",
            session.executor_id,
            self.ctx.config.lease_ttl,
            outcome.requeued,
            outcome.failed,
            extra=logs.fields(executor_id=session.executor_id),
        )
        self.ctx.wake_holders(outcome.shards)
