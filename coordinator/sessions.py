"""Connected executors, their credits, and the shard leases balanced across them.

Executors that serve the same set of task kinds form a *pool*; each pool leases
every shard, spread evenly over its live members (:func:`conveyor.coordinator.shards.balance`),
so a task of kind K is always claimable by some executor that runs K. Only live
executors of the current epoch are pool members: a draining, disconnected or
old-epoch executor keeps reporting what it holds but is given nothing new.

This is in-memory state of the single coordinator process, owned by its event
loop; the database keeps a copy for operators (:mod:`conveyor.coordinator.store.executors`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from conveyor.v1 import executor_service_pb2 as pb

from .shards import balance


class SessionState(StrEnum):
    LIVE = "live"
    DRAINING = "draining"
    DISCONNECTED = "disconnected"


def pool_name(task_kinds: frozenset[str]) -> str:
    return ",".join(sorted(task_kinds))


@dataclass(eq=False)
class ExecutorSession:
    executor_id: str
    epoch: int
    task_kinds: frozenset[str]
    capacity: int
    peer: str
    connected_at_us: int
    state: SessionState = SessionState.LIVE
    credits: int = 0
    shards: frozenset[int] = frozenset()
    #: False after a claim came back short; set again when its shards get work.
    maybe_work: bool = True
    last_seen: float = field(default_factory=time.monotonic)
    #: Messages for the executor's stream; ``None`` closes the stream.
    outbox: asyncio.Queue[pb.ClaimTasksResponse | None] = field(default_factory=asyncio.Queue)
    #: The gRPC status name and reason the stream ends with when the coordinator ends it
    #: (empty: the executor ended it, and it ends OK).
    close_code: str = ""
    close_reason: str = ""

    @property
    def pool(self) -> str:
        return pool_name(self.task_kinds)

    def send(self, message: pb.ClaimTasksResponse) -> None:
        self.outbox.put_nowait(message)

    def close_stream(self, code: str = "", reason: str = "") -> None:
        """End the stream; the coordinator ending it says why (``code`` is a ``grpc.StatusCode`` name)."""
        if code and not self.close_code:
            self.close_code, self.close_reason = code, reason
        self.outbox.put_nowait(None)


class SessionRegistry:
    def __init__(self, shard_count: int) -> None:
        self._shard_count = shard_count
        self._sessions: dict[str, ExecutorSession] = {}
        #: pool -> shard -> executor id
        self._leases: dict[str, dict[int, str]] = {}

    def __iter__(self) -> Iterator[ExecutorSession]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, executor_id: str) -> ExecutorSession | None:
        return self._sessions.get(executor_id)

    def put(self, session: ExecutorSession) -> ExecutorSession | None:
        """Add ``session``, returning the session it replaces (same executor id), if any."""
        previous = self._sessions.get(session.executor_id)
        self._sessions[session.executor_id] = session
        return previous

    def discard(self, session: ExecutorSession) -> None:
        if self._sessions.get(session.executor_id) is session:
            del self._sessions[session.executor_id]

    def leases(self) -> dict[str, dict[int, str]]:
        return {pool: dict(assignment) for pool, assignment in self._leases.items()}

    def rebalance(self, epoch: int) -> tuple[dict[str, dict[int, str]], list[ExecutorSession]]:
        """Recompute every pool's leases from the live members of ``epoch``.

        Returns the new assignment of each pool whose assignment changed, and the
        sessions whose shard set changed (they must be told, and may have work).
        """
        members: dict[str, list[ExecutorSession]] = {}
        for session in self._sessions.values():
            if session.state is SessionState.LIVE and session.epoch == epoch:
                members.setdefault(session.pool, []).append(session)
        changed_pools: dict[str, dict[int, str]] = {}
        for pool in set(self._leases) | set(members):
            current = self._leases.get(pool, {})
            assignment = balance(current, [s.executor_id for s in members.get(pool, [])], self._shard_count)
            if assignment != current:
                changed_pools[pool] = assignment
            if assignment:
                self._leases[pool] = assignment
            else:
                self._leases.pop(pool, None)
        changed_sessions = []
        for session in self._sessions.values():
            assignment = self._leases.get(session.pool, {})
            shards = frozenset(shard for shard, holder in assignment.items() if holder == session.executor_id)
            if shards != session.shards:
                session.shards = shards
                session.maybe_work = True
                changed_sessions.append(session)
        return changed_pools, changed_sessions

    def holders(self, shards: set[int]) -> list[ExecutorSession]:
        """The sessions leasing any of ``shards``, in any pool."""
        ids = {
            assignment[shard]
            for assignment in self._leases.values()
            for shard in shards
            if shard in assignment
        }
        return [self._sessions[i] for i in ids if i in self._sessions]
