"""``workflow_counts`` always equals counting ``workflows``, whatever statement changes them.

The counts are kept by triggers (``conveyor.coordinator.store.counts``), so any insert, status
or name change, or delete is counted in its own transaction; a rolled-back one is not.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from conveyor.coordinator.store import Database
from conveyor.coordinator.store.schema import workflows
from conveyor.coordinator.store.workflows import Workflows

STATUSES = ["running", "completed", "failed", "cancelled"]
NAMES = ["research", "triage"]


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    yield db
    db.dispose()


def counted(database: Database, name: str | None = None) -> dict[str, int]:
    query = sa.select(workflows.c.status, sa.func.count()).group_by(workflows.c.status)
    if name:
        query = query.where(workflows.c.name == name)
    with database.reader.connect() as connection:
        return dict(connection.execute(query).all())  # type: ignore[arg-type]


def test_counts_follow_every_kind_of_change(database: Database) -> None:
    rng = random.Random(3)
    next_id = 0
    for round_number in range(30):
        with database.writer.connect() as connection:
            transaction = connection.begin()
            ids = list(connection.execute(sa.select(workflows.c.id)).scalars())
            action = rng.choice(["insert", "insert", "status", "name", "delete", "noop-update"])
            if action == "insert" or not ids:
                rows = []
                for _ in range(rng.randint(1, 20)):
                    next_id += 1
                    rows.append(
                        {
                            "id": f"wf-{next_id}",
                            "name": rng.choice(NAMES),
                            "status": rng.choice(STATUSES),
                            "shard": 0,
                            "args": "{}",
                            "created_at": next_id,
                            "step_count": 0,
                        }
                    )
                connection.execute(sa.insert(workflows), rows)
            else:
                chosen = rng.sample(ids, rng.randint(1, len(ids)))
                where = workflows.c.id.in_(chosen)
                if action == "status":
                    connection.execute(sa.update(workflows).where(where).values(status=rng.choice(STATUSES)))
                elif action == "name":
                    connection.execute(sa.update(workflows).where(where).values(name=rng.choice(NAMES)))
                elif action == "delete":
                    connection.execute(sa.delete(workflows).where(where))
                else:
                    connection.execute(sa.update(workflows).where(where).values(error="touched"))
            if round_number % 7 == 6:
                transaction.rollback()
            else:
                transaction.commit()
        with database.reader.connect() as connection:
            assert Workflows.count_by_status(connection) == counted(database), action
            for name in NAMES:
                assert Workflows.count_by_status(connection, name) == counted(database, name), action
    assert next_id > 0
