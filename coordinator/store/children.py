"""Starting child workflows (``ctx.child`` / ``ctx.start_child``) in the replay that asked for them.

A child is a workflow row of its own, with its id derived from the parent's step
(:func:`~conveyor.coordinator.model.child_workflow_id`), a creation time of its own, and its
root's FIFO key, so that its tasks queue where its root's do. It starts in the same
transaction as the parent's child step, so neither exists without the other. What finishing
does to a family (children cancelled with their parent, parents told of their children) is
:func:`conveyor.coordinator.store.journal.settle_family`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from ..clock import CreationClock
from ..model import WorkflowStatus, child_workflow_id
from ..shards import shard_for
from .schema import replay_queue, workflows
from .wakeups import note_replays_enqueued


@dataclass(frozen=True)
class ChildStart:
    parent_id: str
    parent_step: int
    #: The parent's FIFO key (its root's creation time), inherited.
    fifo_key: int
    name: str
    args_json: str


@dataclass(frozen=True)
class ChildLink:
    workflow_id: str
    name: str
    status: WorkflowStatus
    parent_step: int


class Children:
    def __init__(self, shard_count: int, clock: CreationClock) -> None:
        self._shard_count = shard_count
        self._clock = clock

    def start(self, connection: Connection, starts: Sequence[ChildStart], now: int) -> None:
        if not starts:
            return
        trace_contexts = {
            row.id: row.trace_context
            for row in connection.execute(
                select(workflows.c.id, workflows.c.trace_context).where(
                    workflows.c.id.in_({start.parent_id for start in starts})
                )
            )
        }
        rows = []
        replays = []
        for start in starts:
            workflow_id = child_workflow_id(start.parent_id, start.parent_step)
            shard = shard_for(workflow_id, self._shard_count)
            rows.append(
                {
                    "id": workflow_id,
                    "name": start.name,
                    "status": WorkflowStatus.RUNNING,
                    "shard": shard,
                    "args": start.args_json,
                    "idempotency_key": None,
                    "created_at": self._clock.next(),
                    "step_count": 0,
                    # The child's steps join the trace of the request that started its root.
                    "trace_context": trace_contexts.get(start.parent_id),
                    "parent_id": start.parent_id,
                    "parent_step": start.parent_step,
                    "root_created_at": start.fifo_key,
                }
            )
            replays.append(
                {
                    "workflow_id": workflow_id,
                    "shard": shard,
                    "workflow_created_at": start.fifo_key,
                    "enqueued_at": now,
                }
            )
        connection.execute(insert(workflows), rows)
        connection.execute(insert(replay_queue), replays)
        note_replays_enqueued(connection)

    @staticmethod
    def running_descendants(connection: Connection, workflow_ids: Collection[str]) -> list[str]:
        """The running workflows below ``workflow_ids`` at any depth: what cancelling them, or their
        child steps, may cancel too (one query per generation)."""
        found: list[str] = []
        generation = list(workflow_ids)
        while generation:
            generation = list(
                connection.execute(
                    select(workflows.c.id).where(
                        workflows.c.parent_id.in_(generation), workflows.c.status == WorkflowStatus.RUNNING
                    )
                ).scalars()
            )
            found += generation
        return found

    @staticmethod
    def of(connection: Connection, parent_id: str, limit: int = 1000) -> list[ChildLink]:
        """The first ``limit`` children of ``parent_id``, in the order they were started."""
        return [
            ChildLink(row.id, row.name, WorkflowStatus(row.status), row.parent_step)
            for row in connection.execute(
                select(workflows.c.id, workflows.c.name, workflows.c.status, workflows.c.parent_step)
                .where(workflows.c.parent_id == parent_id)
                .order_by(workflows.c.parent_step)
                .limit(limit)
            )
        ]
