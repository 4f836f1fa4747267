"""Durable timers: sleep steps and signal waits with a timeout are running steps with a ``wake_at``.

Firing a sleep completes it; firing a signal wait fails it (the workflow gets ``SignalTimeout``).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ..model import StepKind, StepStatus
from .dialect import Dialect
from .journal import enqueue_replays, finish_steps, step_completion
from .schema import steps

# One condition per kind, each matching its partial index (ix_steps_sleeping_wake_at,
# ix_steps_signal_wake_at), so both reads walk only the front of a small index.
_TIMED = {
    StepKind.SLEEP: (steps.c.status == StepStatus.RUNNING, steps.c.kind == StepKind.SLEEP),
    StepKind.SIGNAL: (steps.c.status == StepStatus.RUNNING, steps.c.kind == StepKind.SIGNAL),
}


class Timers:
    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect

    def fire_due(self, connection: Connection, now: int, limit: int = 1000) -> tuple[int, int]:
        """Fire the timers due by ``now``; returns (fired, replays enqueued)."""
        completions = []
        workflow_ids = set()
        for kind, condition in _TIMED.items():
            due = connection.execute(
                select(steps.c.id, steps.c.workflow_id, steps.c.name, steps.c.args)
                .where(*condition, steps.c.wake_at <= now)
                .order_by(steps.c.wake_at)
                .limit(limit)
            ).all()
            for row in due:
                workflow_ids.add(row.workflow_id)
                if kind is StepKind.SLEEP:
                    completions.append(step_completion(row.id, StepStatus.COMPLETED, "null", None, now))
                else:
                    completions.append(step_completion(row.id, StepStatus.FAILED, None, _timed_out(row), now))
        if not completions:
            return 0, 0
        finish_steps(connection, completions)
        return len(completions), enqueue_replays(connection, self._dialect, workflow_ids, now)

    @staticmethod
    def next_wake_at(connection: Connection) -> int | None:
        wakes = [
            connection.execute(select(func.min(steps.c.wake_at)).where(*condition)).scalar()
            for condition in _TIMED.values()
        ]
        return min((wake for wake in wakes if wake is not None), default=None)


def _timed_out(row: Any) -> str:
    timeout = json.loads(row.args).get("timeout")
    return f"no signal {row.name!r} arrived within {timeout} s (ctx.wait_for_signal timeout)"
