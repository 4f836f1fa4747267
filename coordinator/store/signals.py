"""Signals: events sent to a running workflow, buffered until ``ctx.wait_for_signal`` takes them.

A wait is a running ``signal`` step named after the signal. Whichever comes second — the
signal (:meth:`Signals.send`) or the wait (a replay that starts the step, then
:meth:`Signals.deliver`) — completes the step with the payload in the same transaction,
oldest buffered signal of that name first, and enqueues the workflow for replay. So a
signal is never lost between the two, and a workflow's waits for one name see its signals
in the order they were sent. A wait with a timeout has a ``wake_at``; the timer loop fails
it (:meth:`Signals.expire_due`), which raises ``SignalTimeout`` in the workflow.
"""

from __future__ import annotations

import collections
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from conveyor.errors import FailedPrecondition, NotFound, ResourceExhausted

from ..model import StepKind, StepStatus, WorkflowStatus
from .dialect import Dialect
from .journal import enqueue_replays, finish_steps, step_completion
from .schema import signals, steps, workflows

#: Signals buffered for one workflow that nothing has waited for yet. A sender that outpaces
#: the workflow for this long is refused (RESOURCE_EXHAUSTED) rather than growing the table.
MAX_BUFFERED_SIGNALS = 1_000

_mark_delivered = (
    update(signals).where(signals.c.id == bindparam("signal_id")).values(step_number=bindparam("number"))
)


@dataclass(frozen=True)
class SignalSent:
    #: True when a waiting step took it at once (the workflow was enqueued for replay).
    delivered: bool
    #: True when the idempotency key matched an earlier signal: nothing new was stored.
    duplicate: bool = False


class Signals:
    """Write units over the signal buffer."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect

    def send(
        self,
        connection: Connection,
        *,
        workflow_id: str,
        name: str,
        payload_json: str,
        idempotency_key: str | None,
        now: int,
    ) -> SignalSent:
        status = connection.execute(select(workflows.c.status).where(workflows.c.id == workflow_id)).scalar()
        if status is None:
            raise NotFound(f"no workflow with id {workflow_id!r}")
        if idempotency_key is not None:
            earlier = connection.execute(
                select(signals.c.step_number).where(
                    signals.c.workflow_id == workflow_id, signals.c.idempotency_key == idempotency_key
                )
            ).first()
            if earlier is not None:
                return SignalSent(delivered=earlier.step_number is not None, duplicate=True)
        if status != WorkflowStatus.RUNNING:
            raise FailedPrecondition(
                f"workflow {workflow_id} already finished ({status}); signals reach only running workflows"
            )
        buffered = connection.execute(
            select(func.count())
            .select_from(signals)
            .where(signals.c.workflow_id == workflow_id, signals.c.step_number.is_(None))
        ).scalar_one()
        if buffered >= MAX_BUFFERED_SIGNALS and not _waits_for(connection, workflow_id, name):
            raise ResourceExhausted(
                f"workflow {workflow_id} already holds {buffered} signals it has not waited for; "
                f"the limit is {MAX_BUFFERED_SIGNALS}. Send again once it has taken some (see "
                "'conveyor explain'), or check that it waits for the names you send"
            )
        connection.execute(
            insert(signals).values(
                workflow_id=workflow_id,
                name=name,
                payload=payload_json,
                idempotency_key=idempotency_key,
                sent_at=now,
            )
        )
        return SignalSent(delivered=bool(deliver_buffered(connection, self._dialect, [workflow_id], now)))

    @staticmethod
    def buffered(connection: Connection, workflow_id: str) -> list[tuple[str, int]]:
        """(name, how many) of the signals ``workflow_id`` was sent and has not waited for yet,
        by the first one sent of each name: what Explain tells an operator who wonders where they went."""
        first = func.min(signals.c.id)
        return [
            (row.name, row.how_many)
            for row in connection.execute(
                select(signals.c.name, func.count().label("how_many"))
                .where(signals.c.workflow_id == workflow_id, signals.c.step_number.is_(None))
                .group_by(signals.c.name)
                .order_by(first)
            )
        ]


def _waits_for(connection: Connection, workflow_id: str, name: str) -> bool:
    return (
        connection.execute(
            select(steps.c.id).where(
                steps.c.workflow_id == workflow_id,
                steps.c.status == StepStatus.RUNNING,
                steps.c.kind == StepKind.SIGNAL,
                steps.c.name == name,
            )
        ).first()
        is not None
    )


def deliver_buffered(
    connection: Connection, dialect: Dialect, workflow_ids: Collection[str], now: int
) -> set[str]:
    """Hand buffered signals to waiting steps of ``workflow_ids``; returns the workflows that got one.

    Each waiting step (in journal order) takes the oldest buffered signal of its name. The
    workflows that got one are enqueued for replay here, in the same transaction.
    """
    if not workflow_ids:
        return set()
    waiting = connection.execute(
        select(steps.c.id, steps.c.workflow_id, steps.c.number, steps.c.name)
        .where(
            steps.c.workflow_id.in_(list(workflow_ids)),
            steps.c.status == StepStatus.RUNNING,
            steps.c.kind == StepKind.SIGNAL,
        )
        .order_by(steps.c.workflow_id, steps.c.number)
    ).all()
    if not waiting:
        return set()
    buffered: dict[tuple[str, str], collections.deque[tuple[int, str]]] = collections.defaultdict(
        collections.deque
    )
    for row in connection.execute(
        select(signals.c.id, signals.c.workflow_id, signals.c.name, signals.c.payload)
        .where(
            signals.c.workflow_id.in_({row.workflow_id for row in waiting}), signals.c.step_number.is_(None)
        )
        .order_by(signals.c.id)
    ):
        buffered[(row.workflow_id, row.name)].append((row.id, row.payload))
    completions: list[dict[str, object]] = []
    taken: list[dict[str, object]] = []
    delivered: set[str] = set()
    for step in waiting:
        queue = buffered.get((step.workflow_id, step.name))
        if queue:
            signal_id, payload = queue.popleft()
            taken.append({"signal_id": signal_id, "number": step.number})
            completions.append(step_completion(step.id, StepStatus.COMPLETED, payload, None, now))
            delivered.add(step.workflow_id)
    if delivered:
        finish_steps(connection, completions)
        connection.execute(_mark_delivered, taken)
        enqueue_replays(connection, dialect, delivered, now)
    return delivered
