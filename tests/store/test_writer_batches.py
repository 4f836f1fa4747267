"""Group commit: units that share a transaction do not share a failure.

The writer runs a batch without SAVEPOINTs first and, when a unit raises, rolls back and
runs the batch again with each unit in its own: the others' writes commit, the failing
unit's do not, and each caller gets its own outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from conveyor.coordinator.store.database import Database
from conveyor.coordinator.store.executors import ExecutorRecords
from conveyor.coordinator.store.schema import cluster
from conveyor.coordinator.store.writer import Writer
from conveyor.errors import InvalidArgument


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    db.open_cluster(None)
    yield db
    db.dispose()


def epoch(db: Database) -> int:
    with db.reader.connect() as connection:
        return int(connection.execute(sa.select(cluster.c.epoch)).scalar_one())


def bump_then_fail(connection: Connection) -> int:
    ExecutorRecords.bump_epoch(connection)
    raise InvalidArgument("refused after writing")


def bump_then_break(connection: Connection) -> int:
    ExecutorRecords.bump_epoch(connection)
    raise RuntimeError("a bug after writing")


@pytest.mark.parametrize("failing", [bump_then_fail, bump_then_break], ids=["refusal", "bug"])
async def test_a_failing_unit_undoes_only_its_own_writes(database: Database, failing: object) -> None:
    # A long window: the five units below land in one batch.
    writer = Writer(database.writer, group_commit_window=0.2)
    writer.start()
    try:
        before = epoch(database)
        outcomes = await asyncio.gather(
            writer.run(ExecutorRecords.bump_epoch, "bump epoch"),
            writer.run(failing, "failing"),  # type: ignore[arg-type]
            writer.run(ExecutorRecords.bump_epoch, "bump epoch"),
            writer.run(failing, "failing"),  # type: ignore[arg-type]
            writer.run(ExecutorRecords.bump_epoch, "bump epoch"),
            return_exceptions=True,
        )
        assert writer.transactions == 1 and writer.units == 5
        assert [type(o) for o in outcomes[1::2]] == [type(failing_error(failing))] * 2
        # Each good unit applied exactly once, in order, as if the failing ones never ran.
        assert outcomes[0::2] == [before + 1, before + 2, before + 3]
        assert epoch(database) == before + 3
        # Alone in its batch, a failing unit leaves nothing behind either.
        with pytest.raises(type(failing_error(failing))):
            await writer.run(failing, "failing")  # type: ignore[arg-type]
        assert epoch(database) == before + 3
        assert await writer.run(ExecutorRecords.bump_epoch, "bump epoch") == before + 4
    finally:
        await writer.stop()


def failing_error(failing: object) -> Exception:
    return InvalidArgument("x") if failing is bump_then_fail else RuntimeError("x")
