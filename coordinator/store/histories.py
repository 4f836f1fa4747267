"""Reading stored workflows with their journals, for replaying them against new code (replay-check).

Read-only: nothing here writes, so it is safe against a database a coordinator is serving.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.engine import Connection

from ..model import WorkflowStatus
from ..replay import JournalEntry
from .replays import ReplayQueue
from .schema import workflows

#: Workflows read per query: bounds memory, since each comes with its whole journal.
PAGE_SIZE = 200


@dataclass(frozen=True)
class StoredHistory:
    workflow_id: str
    name: str
    #: The workflow's arguments as stored (canonical JSON), None for none.
    args: str | None
    status: WorkflowStatus
    journal: tuple[JournalEntry, ...]
    #: As stored: the activations its journal records (None: from before they were recorded).
    activations: int | None = None
    created_at: int = 0


def histories(
    connection: Connection,
    *,
    statuses: Collection[WorkflowStatus],
    names: Collection[str] = (),
    sample: int | None = None,
) -> Iterator[StoredHistory]:
    """The matching workflows (oldest first, or ``sample`` of them at random) with their journals."""
    query = select(
        workflows.c.id,
        workflows.c.name,
        workflows.c.args,
        workflows.c.status,
        workflows.c.created_at,
        workflows.c.activations,
    ).where(workflows.c.status.in_([status.value for status in statuses]))
    if names:
        query = query.where(workflows.c.name.in_(list(names)))
    if sample is not None:
        rows = connection.execute(query.order_by(func.random()).limit(sample)).all()
        yield from _with_journals(connection, rows)
        return
    after: tuple[int, str] | None = None
    while True:
        page = query.order_by(workflows.c.created_at, workflows.c.id).limit(PAGE_SIZE)
        if after is not None:
            page = page.where(tuple_(workflows.c.created_at, workflows.c.id) > after)
        rows = connection.execute(page).all()
        if not rows:
            return
        yield from _with_journals(connection, rows)
        after = (rows[-1].created_at, rows[-1].id)


def names_outside(
    connection: Connection, *, statuses: Collection[WorkflowStatus], names: Collection[str]
) -> dict[str, int]:
    """How many workflows in ``statuses`` carry each name not in ``names``."""
    query = (
        select(workflows.c.name, func.count().label("total"))
        .where(workflows.c.status.in_([status.value for status in statuses]))
        .group_by(workflows.c.name)
    )
    if names:
        query = query.where(workflows.c.name.not_in(list(names)))
    return {row.name: row.total for row in connection.execute(query)}


def _with_journals(connection: Connection, rows: Sequence[Any]) -> Iterator[StoredHistory]:
    journals = ReplayQueue.load_journals(connection, [row.id for row in rows])
    for row in rows:
        yield StoredHistory(
            row.id,
            row.name,
            row.args,
            WorkflowStatus(row.status),
            tuple(journals.get(row.id, ())),
            row.activations,
            row.created_at,
        )
