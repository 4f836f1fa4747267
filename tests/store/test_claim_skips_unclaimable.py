"""Claims skip what they cannot take and keep FIFO order, with the claimable-only indexes.

Tasks that are claimed, waiting out a backoff, or of a kind the executor does not
serve are interleaved (in FIFO position) with claimable ones; a claim returns exactly
the claimable ones, oldest workflow first, whichever plan it takes; a backoff that ends
puts its task back in its original FIFO position; a released task is claimable again.
Each state is reached through the queue's own write paths (claim, record, release).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from conveyor.coordinator.model import ErrorClass, StepStatus
from conveyor.coordinator.store import Database, ReportedResult, TaskQueue
from conveyor.coordinator.store.schema import steps, tasks, workflows

SHARDS = 4
#: Per workflow (created in this order): the kind of its one task.
KINDS = ["llm", "embed", "llm", "llm", "nobody", "llm", "embed", "llm", "nobody", "llm", "llm", "llm"]
T0 = 1_000_000_000


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    db.open_cluster(SHARDS)
    yield db
    db.dispose()


def enqueue(database: Database) -> list[int]:
    """One running workflow per entry of KINDS, each with one queued task; returns task ids in FIFO order."""
    ids = []
    with database.writer.begin() as connection:
        for number, kind in enumerate(KINDS):
            workflow_id, created_at, shard = f"wf-{number:02}", 100 + number, number % SHARDS
            connection.execute(
                sa.insert(workflows).values(
                    id=workflow_id,
                    name="model",
                    status="running",
                    shard=shard,
                    args="{}",
                    created_at=created_at,
                    step_count=1,
                )
            )
            step_id = connection.execute(
                sa.insert(steps)
                .values(
                    workflow_id=workflow_id,
                    number=0,
                    kind="llm" if kind == "llm" else "task",
                    name="s",
                    args="{}",
                    status=StepStatus.RUNNING,
                    attempt=0,
                    created_at=created_at,
                )
                .returning(steps.c.id)
            ).scalar_one()
            connection.execute(
                sa.insert(tasks).values(
                    id=step_id,
                    shard=shard,
                    workflow_created_at=created_at,
                    workflow_id=workflow_id,
                    kind=kind,
                    attempt=1,
                    max_attempts=5,
                    initial_backoff=30.0,
                    backoff_multiplier=2.0,
                    max_backoff=60.0,
                    rate_limit_waits=0,
                    max_rate_limit_waits=3,
                    available_at=T0,
                    fencing_token=0,
                )
            )
            ids.append(step_id)
    return ids


@pytest.mark.parametrize(
    ("shards", "shard_count"),
    [(None, SHARDS), (list(range(SHARDS)), SHARDS), (list(range(SHARDS)), 1000)],
    ids=["any-shard walk", "held-shards walk", "shard by shard"],
)
def test_claims_take_only_claimable_tasks_in_fifo_order(
    database: Database, shards: list[int] | None, shard_count: int
) -> None:
    ids = enqueue(database)
    queue = TaskQueue(database.dialect, rng=random.Random(1), shard_count=shard_count)
    llm = [task_id for task_id, kind in zip(ids, KINDS, strict=True) if kind == "llm"]
    embed = [task_id for task_id, kind in zip(ids, KINDS, strict=True) if kind == "embed"]

    with database.writer.begin() as connection:
        # "other" holds the two oldest llm tasks; the third fails and backs off for >= 30 s.
        held = queue.claim(connection, "other", shards, ["llm"], 3, T0 + 1)
        assert [t.task_id for t in held] == llm[:3]
        outcome = queue.record(
            connection,
            "other",
            [
                ReportedResult(
                    held[2].task_id, held[2].fencing_token, error_class=ErrorClass.RETRYABLE, error="x"
                )
            ],
            T0 + 2,
        )
        assert outcome.next_retry_at is not None and outcome.next_retry_at >= T0 + 2 + 15_000_000

    with database.writer.begin() as connection:
        first = queue.claim(connection, "me", shards, ["llm", "embed"], 2, T0 + 3)
        rest = queue.claim(connection, "me", shards, ["llm", "embed"], 100, T0 + 4)
        none_left = queue.claim(connection, "me", shards, ["llm", "embed"], 100, T0 + 5)
        delayed_until = queue.earliest_delayed(connection, T0 + 5)

    # Oldest workflow first, across kinds; nothing claimed, delayed or of kind "nobody".
    expected = sorted(embed + llm[3:], key=ids.index)
    assert [t.task_id for t in first + rest] == expected
    assert none_left == []
    assert delayed_until == outcome.next_retry_at

    with database.writer.begin() as connection:
        # Once its backoff ends the retried task is claimable again at its own FIFO
        # position (wf-03), and so is the released one (wf-01).
        assert delayed_until is not None
        queue.release_unheld(connection, "me", [t.task_id for t in first + rest][1:])
        back = queue.claim(connection, "third", shards, ["llm", "embed"], 100, delayed_until)
        assert queue.earliest_delayed(connection, delayed_until) is None

    assert [t.task_id for t in back] == sorted([llm[2], first[0].task_id], key=ids.index)
    assert [t.workflow_id for t in back] == ["wf-01", "wf-03"]
    assert back[1].attempt == 2
    with database.reader.connect() as connection:
        unserved = connection.execute(
            sa.select(tasks.c.id).where(tasks.c.kind == "nobody", tasks.c.claimed_by.is_(None))
        ).scalars()
        assert sorted(unserved) == [i for i, kind in zip(ids, KINDS, strict=True) if kind == "nobody"]
