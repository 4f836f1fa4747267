"""Durable timers: sleep steps are running steps with a ``wake_at``; firing one completes it."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ..model import StepKind, StepStatus
from .dialect import Dialect
from .journal import enqueue_replays, finish_steps
from .schema import steps

_sleeping = (steps.c.status == StepStatus.RUNNING, steps.c.kind == StepKind.SLEEP)


class Timers:
    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect

    def fire_due(self, connection: Connection, now: int, limit: int = 1000) -> tuple[int, int]:
        """Complete the sleep steps due by ``now``; returns (fired, replays enqueued)."""
        due = connection.execute(
            select(steps.c.id, steps.c.workflow_id)
            .where(*_sleeping, steps.c.wake_at <= now)
            .order_by(steps.c.wake_at)
            .limit(limit)
        ).all()
        if not due:
            return 0, 0
        finish_steps(
            connection,
            [
                {
                    "step_id": row.id,
                    "status": StepStatus.COMPLETED,
                    "result": "null",
                    "error": None,
                    "attempt": 0,
                    "started_at": None,
                    "completed_at": now,
                    "executor_id": None,
                    "result_token": None,
                }
                for row in due
            ],
        )
        return len(due), enqueue_replays(connection, self._dialect, {row.workflow_id for row in due}, now)

    @staticmethod
    def next_wake_at(connection: Connection) -> int | None:
        return connection.execute(select(func.min(steps.c.wake_at)).where(*_sleeping)).scalar()
