"""What the database remembers about executors, shard leases and the epoch.

Liveness is decided in memory by the coordinator (it sees every heartbeat); these
rows make that state visible to operators and survive a coordinator restart.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from .schema import cluster, executors, shard_leases


class ExecutorRecords:
    @staticmethod
    def save(
        connection: Connection,
        *,
        executor_id: str,
        epoch: int,
        state: str,
        capacity: int,
        task_kinds: Collection[str],
        peer: str,
        now: int,
    ) -> None:
        values = {
            "epoch": epoch,
            "state": state,
            "capacity": capacity,
            "task_kinds": json.dumps(sorted(task_kinds)),
            "peer": peer[:200],
            "connected_at": now,
            "last_heartbeat_at": now,
        }
        updated = connection.execute(update(executors).where(executors.c.id == executor_id).values(**values))
        if updated.rowcount == 0:
            connection.execute(insert(executors).values(id=executor_id, **values))

    @staticmethod
    def set_state(connection: Connection, executor_ids: Collection[str], state: str) -> None:
        if executor_ids:
            connection.execute(
                update(executors).where(executors.c.id.in_(list(executor_ids))).values(state=state)
            )

    @staticmethod
    def record_heartbeats(connection: Connection, last_seen: Mapping[str, int]) -> None:
        if last_seen:
            connection.execute(
                update(executors)
                .where(executors.c.id == bindparam("executor_id"))
                .values(last_heartbeat_at=bindparam("seen_at")),
                [{"executor_id": executor_id, "seen_at": seen} for executor_id, seen in last_seen.items()],
            )

    @staticmethod
    def save_leases(connection: Connection, pool: str, assignment: Mapping[int, str], now: int) -> None:
        """Replace the pool's lease rows with ``assignment`` (shard -> executor)."""
        connection.execute(delete(shard_leases).where(shard_leases.c.pool == pool))
        if assignment:
            connection.execute(
                insert(shard_leases),
                [
                    {"pool": pool, "shard": shard, "executor_id": executor_id, "assigned_at": now}
                    for shard, executor_id in sorted(assignment.items())
                ],
            )

    @staticmethod
    def clear_leases(connection: Connection) -> None:
        connection.execute(delete(shard_leases))

    @staticmethod
    def bump_epoch(connection: Connection) -> int:
        connection.execute(update(cluster).values(epoch=cluster.c.epoch + 1))
        return int(connection.execute(select(cluster.c.epoch)).scalar_one())
