"""Migrations build exactly ``coordinator/store/schema.py``, on SQLite and on PostgreSQL.

``Database.migrate`` runs at every coordinator start, so it must be idempotent, and
``Database.open_cluster`` fixes the shard count when a database is created.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from conveyor.coordinator.store.database import DEFAULT_SHARD_COUNT, MIGRATIONS, ClusterFacts, Database
from conveyor.coordinator.store.namespace import VERSION_TABLE
from conveyor.coordinator.store.schema import cluster, metadata, workflows
from conveyor.errors import ConfigurationError


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


def script_directory() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def schema_differences(db: Database) -> list[Any]:
    with db.writer.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        return list(compare_metadata(context, metadata))


def partial_index_predicates(db: Database) -> dict[str, str]:
    """``{index name: WHERE clause}`` of the migrated database's partial indexes, normalised.

    Alembic's comparison ignores index predicates, so they are compared here. PostgreSQL
    reflects them in its own spelling (``((status)::text = 'running'::text)``); dropping
    casts, parentheses, spaces and case leaves the predicate itself.
    """
    found = {}
    with db.writer.connect() as connection:
        inspector = sa.inspect(connection)
        for table in inspector.get_table_names():
            for index in inspector.get_indexes(table):
                options = index.get("dialect_options", {})
                where = options.get("postgresql_where", options.get("sqlite_where"))
                if where is not None:
                    found[index["name"]] = normalise_predicate(str(where))
    return found


def normalise_predicate(text: str) -> str:
    return re.sub(r"::\w+|[()\s]", "", text).lower()


def schema_predicates() -> dict[str, str]:
    found = {}
    for table in metadata.tables.values():
        for index in table.indexes:
            where = index.dialect_options["postgresql"]["where"]
            if where is not None:
                assert str(index.dialect_options["sqlite"]["where"]) == str(where)
                found[str(index.name)] = normalise_predicate(str(where))
    return found


def current_revision(db: Database) -> str | None:
    with db.writer.connect() as connection:
        return MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


# --- the migration chain ------------------------------------------------------------------------


def test_there_is_exactly_one_migration_head() -> None:
    heads = script_directory().get_heads()

    assert len(heads) == 1, f"migrations have several heads {heads}; merge them (alembic merge)"


def test_migrating_a_fresh_database_builds_exactly_the_schema(database: Database) -> None:
    database.migrate()

    assert schema_differences(database) == []
    assert current_revision(database) == script_directory().get_current_head()


def test_migrated_partial_indexes_have_the_schemas_predicates(database: Database) -> None:
    database.migrate()

    expected = schema_predicates()
    assert expected, "schema.py declares partial indexes; this test must see them"
    assert partial_index_predicates(database) == expected


def test_migrating_twice_changes_nothing_and_keeps_the_data(database: Database) -> None:
    database.migrate()
    facts = database.open_cluster(12)
    with database.writer.begin() as connection:
        connection.execute(
            sa.insert(workflows).values(
                id="wf-1", name="research", status="running", shard=3, args="{}", created_at=42, step_count=0
            )
        )

    database.migrate()

    assert schema_differences(database) == []
    assert current_revision(database) == script_directory().get_current_head()
    assert database.open_cluster(None) == ClusterFacts(facts.shard_count, facts.epoch, 42)
    with database.reader.connect() as connection:
        assert connection.execute(sa.select(workflows.c.id, workflows.c.shard)).all() == [("wf-1", 3)]


def test_a_second_database_object_migrates_an_already_migrated_database(database_url: str) -> None:
    """Every coordinator start migrates; a restart meets a database it migrated before."""
    first = Database(database_url)
    try:
        first.migrate()
        first.open_cluster(5)
    finally:
        first.dispose()
    second = Database(database_url)
    try:
        second.migrate()
        assert second.open_cluster(None).shard_count == 5
        assert schema_differences(second) == []
    finally:
        second.dispose()


# --- the cluster row ----------------------------------------------------------------------------


def cluster_rows(db: Database) -> list[Any]:
    with db.reader.connect() as connection:
        return list(connection.execute(sa.select(cluster.c.id, cluster.c.shard_count, cluster.c.epoch)))


def test_open_cluster_creates_the_cluster_row_once_with_the_requested_shards(database: Database) -> None:
    database.migrate()

    created = database.open_cluster(16)
    again = database.open_cluster(16)
    without_flag = database.open_cluster(None)

    assert created == ClusterFacts(shard_count=16, epoch=1, last_created_at=0)
    assert again == without_flag == created
    assert cluster_rows(database) == [(1, 16, 1)]


def test_open_cluster_defaults_to_the_default_shard_count(database: Database) -> None:
    database.migrate()

    assert database.open_cluster(None).shard_count == DEFAULT_SHARD_COUNT
    assert cluster_rows(database) == [(1, DEFAULT_SHARD_COUNT, 1)]


def test_open_cluster_refuses_a_different_shard_count_on_an_existing_database(database: Database) -> None:
    database.migrate()
    database.open_cluster(16)

    with pytest.raises(ConfigurationError) as refused:
        database.open_cluster(32)

    message = str(refused.value)
    assert "created with 16 shards" in message
    assert "--shards 32" in message
    assert "new database" in message
    assert cluster_rows(database) == [(1, 16, 1)]
