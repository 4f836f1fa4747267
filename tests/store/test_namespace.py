"""Conveyor shares a database with an application: its own names, its own Alembic history.

Every object Conveyor creates is named ``conveyor_...`` and its revision lives in
``conveyor_alembic_version``, so it migrates into a database that already holds an
Alembic-managed application (even one with tables called ``tasks`` and ``workflows``),
leaves that application's history alone, and stays out of its autogenerate once the
application filters with ``owns_table``. A database from before the prefix is moved
to the prefixed names, its rows intact.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.pool import NullPool

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.store import owns_table
from conveyor.coordinator.store.database import MIGRATIONS, Database, migration_config
from conveyor.coordinator.store.namespace import PREFIX, VERSION_TABLE
from conveyor.coordinator.store.schema import (
    cluster,
    metadata,
    replay_queue,
    steps,
    tasks,
    workflow_counts,
    workflows,
)
from support import registry_of
from toolkit import MakeStack

# --- a tiny application with its own Alembic history ----------------------------------------------

APP_ENV = """
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
"""

#: The application's revisions. Its tables are called what Conveyor's were before the prefix.
APP_REVISIONS = {
    "app1": """
        import sqlalchemy as sa
        from alembic import op

        revision, down_revision, branch_labels, depends_on = "app1", None, None, None

        def upgrade():
            op.create_table(
                "tasks",
                sa.Column("id", sa.Integer(), nullable=False),
                sa.Column("title", sa.String(100), nullable=False),
                sa.PrimaryKeyConstraint("id", name="pk_tasks"),
            )
            op.create_index("ix_tasks_title", "tasks", ["title"])
    """,
    "app2": """
        import sqlalchemy as sa
        from alembic import op

        revision, down_revision, branch_labels, depends_on = "app2", "app1", None, None

        def upgrade():
            op.create_table(
                "workflows",
                sa.Column("id", sa.Integer(), nullable=False),
                sa.Column("name", sa.String(100), nullable=False),
                sa.PrimaryKeyConstraint("id", name="pk_workflows"),
            )
            op.create_index("ix_workflows_created_at", "workflows", ["name"])
    """,
    # Written only after Conveyor is in the database: the application keeps migrating.
    "app3": """
        import sqlalchemy as sa
        from alembic import op

        revision, down_revision, branch_labels, depends_on = "app3", "app2", None, None

        def upgrade():
            op.add_column("tasks", sa.Column("done", sa.Integer(), nullable=True))
    """,
}

APP_METADATA = sa.MetaData()
sa.Table(
    "tasks",
    APP_METADATA,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("title", sa.String(100), nullable=False),
    sa.Column("done", sa.Integer(), nullable=True),
    sa.Index("ix_tasks_title", "title"),
)
sa.Table(
    "workflows",
    APP_METADATA,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Index("ix_workflows_created_at", "name"),
)


def include_name(name: str | None, type_: str, _parents: Any) -> bool:
    """The one line an application's env.py adds to leave Conveyor's tables alone."""
    return type_ != "table" or not owns_table(str(name))


def write_app(directory: Path, *revisions: str) -> Path:
    (directory / "versions").mkdir(parents=True, exist_ok=True)
    (directory / "env.py").write_text(APP_ENV)
    for revision in revisions:
        (directory / "versions" / f"{revision}.py").write_text(textwrap.dedent(APP_REVISIONS[revision]))
    return directory


def run_app(url: str, work: Any) -> Any:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            return work(connection)
    finally:
        engine.dispose()


def migrate_app(url: str, directory: Path) -> None:
    def upgrade(connection: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(directory))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    run_app(url, upgrade)


def app_revision(url: str) -> str | None:
    return run_app(url, lambda c: MigrationContext.configure(c).get_current_revision())  # type: ignore[no-any-return]


def app_autogenerate(url: str, *, filtered: bool) -> list[Any]:
    """What ``alembic revision --autogenerate`` of the application would propose."""
    opts: dict[str, Any] = {"compare_type": True}
    if filtered:
        opts["include_name"] = include_name
    diffs: list[Any] = run_app(
        url, lambda c: list(compare_metadata(MigrationContext.configure(c, opts=opts), APP_METADATA))
    )
    return diffs


# --- Conveyor's side ------------------------------------------------------------------------------


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


def head() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def conveyor_revision(db: Database) -> str | None:
    with db.writer.connect() as connection:
        return MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def schema_differences(db: Database) -> list[Any]:
    """Conveyor's tables against ``schema.py`` (an application's tables are not compared)."""
    opts = {"compare_type": True, "version_table": VERSION_TABLE, "include_name": conveyor_only}
    with db.writer.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection, opts=opts), metadata))


def conveyor_only(name: str | None, type_: str, _parents: Any) -> bool:
    return type_ != "table" or owns_table(str(name))


def object_names(db: Database) -> dict[str, set[str]]:
    """Every table, index, constraint, trigger and sequence in the database (or schema), by kind."""
    found: dict[str, set[str]] = {
        kind: set() for kind in ("table", "index", "constraint", "trigger", "sequence")
    }
    with db.writer.connect() as connection:
        inspector = sa.inspect(connection)
        for table in inspector.get_table_names():
            found["table"].add(table)
            found["index"] |= {str(index["name"]) for index in inspector.get_indexes(table)}
            found["constraint"] |= {str(c["name"]) for c in inspector.get_unique_constraints(table)}
            found["constraint"] |= {str(c["name"]) for c in inspector.get_foreign_keys(table)}
            found["constraint"].add(str(inspector.get_pk_constraint(table)["name"]))
        if connection.dialect.name == "postgresql":
            found["trigger"] = set(
                connection.exec_driver_sql(
                    "SELECT trigger_name FROM information_schema.triggers "
                    "WHERE trigger_schema = current_schema()"
                ).scalars()
            )
            found["sequence"] = set(
                connection.exec_driver_sql(
                    "SELECT sequence_name FROM information_schema.sequences "
                    "WHERE sequence_schema = current_schema()"
                ).scalars()
            )
        else:
            found["trigger"] = set(
                connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars()
            )
    return found


def partial_indexes(db: Database) -> dict[str, str]:
    """``{index: WHERE clause}`` of the database's partial indexes, in one spelling for both databases."""
    found = {}
    with db.writer.connect() as connection:
        inspector = sa.inspect(connection)
        for table in inspector.get_table_names():
            for index in inspector.get_indexes(table):
                options = index.get("dialect_options", {})
                where = options.get("postgresql_where", options.get("sqlite_where"))
                if where is not None:
                    found[str(index["name"])] = normalise(str(where))
    return found


def normalise(predicate: str) -> str:
    """PostgreSQL reflects ``((status)::text = 'running'::text)``; casts, parentheses and spaces go."""
    return re.sub(r"::\w+|[()\s]", "", predicate).lower()


def unprefixed(names: dict[str, set[str]]) -> dict[str, set[str]]:
    return {kind: {name for name in found if not name.startswith(PREFIX)} for kind, found in names.items()}


@workflow
async def greet(ctx: WorkflowContext, who: str) -> str:
    reply = await ctx.llm(model="sim", max_tokens=10, messages=[{"role": "user", "content": who}])
    return reply.text


async def run_one_workflow(make_stack: MakeStack) -> None:
    stack = await make_stack(registry_of(greet))
    await stack.start_simulator()
    stack.start_executor()
    assert stack.client is not None
    started = await stack.client.start_workflow("greet", {"who": "app"})
    finished = await stack.client.wait(started.workflow_id, timeout=30)
    assert finished.status == WorkflowStatus.COMPLETED, finished


# --- the names ------------------------------------------------------------------------------------


def test_owns_table_tells_conveyors_tables_by_their_prefix() -> None:
    assert all(owns_table(table.name) for table in metadata.tables.values())
    assert owns_table(VERSION_TABLE)
    assert not owns_table("workflows") and not owns_table("alembic_version")


def test_a_new_database_holds_only_conveyor_names_and_its_own_version_table(database: Database) -> None:
    database.migrate()

    names = object_names(database)
    assert unprefixed(names) == {kind: set() for kind in names}
    assert names["table"] == {*metadata.tables, VERSION_TABLE}
    assert len(names["trigger"]) == 3
    assert conveyor_revision(database) == head()


# --- beside an application ------------------------------------------------------------------------


async def test_conveyor_migrates_and_runs_in_a_database_with_another_alembic_app(
    database_url: str, tmp_path: Path, make_stack: MakeStack
) -> None:
    app = write_app(tmp_path / "app", "app1", "app2")
    migrate_app(database_url, app)
    run_app(database_url, lambda c: c.execute(sa.text("INSERT INTO tasks (id, title) VALUES (1, 'keep me')")))

    await run_one_workflow(make_stack)  # the coordinator migrates the database at start

    assert app_revision(database_url) == "app2"
    assert run_app(database_url, lambda c: c.execute(sa.text("SELECT id, title FROM tasks")).all()) == [
        (1, "keep me")
    ]
    db = Database(database_url)
    try:
        assert conveyor_revision(db) == head()
        assert schema_differences(db) == []
        # The application keeps migrating, and Conveyor keeps starting, each on its own history.
        write_app(app, "app3")
        migrate_app(database_url, app)
        db.migrate()
        assert app_revision(database_url) == "app3"
        assert conveyor_revision(db) == head()
    finally:
        db.dispose()


def test_the_apps_autogenerate_proposes_nothing_about_conveyor_with_the_owns_table_filter(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    migrate_app(database_url, write_app(tmp_path / "app", "app1", "app2", "app3"))
    database.migrate()

    assert app_autogenerate(database_url, filtered=True) == []
    # Without the filter it would drop Conveyor's tables: the filter is what keeps them.
    unfiltered = app_autogenerate(database_url, filtered=False)
    assert {diff[1].name for diff in unfiltered if diff[0] == "remove_table"} == {
        *metadata.tables,
        VERSION_TABLE,
    }


def test_conveyor_first_then_the_app_each_keep_their_own_history(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    database.migrate()
    migrate_app(database_url, write_app(tmp_path / "app", "app1", "app2"))
    database.migrate()

    assert app_revision(database_url) == "app2"
    assert conveyor_revision(database) == head()
    assert schema_differences(database) == []


# --- a database from before the prefix ------------------------------------------------------------

LEGACY_TABLES = ("cluster", "workflows", "steps", "tasks", "replay_queue", "workflow_counts")


def build_legacy_database(url: str, revision: str) -> None:
    """A database as Conveyor before the prefix left it: old names, its revision in ``alembic_version``."""
    db = Database(url)
    try:
        with db.writer.connect() as connection:
            config = migration_config(connection, legacy_names=True)
            config.attributes["version_table"] = "alembic_version"
            command.upgrade(config, revision)
            connection.commit()
    finally:
        db.dispose()


LEGACY_ROWS = [
    "INSERT INTO cluster (id, shard_count, epoch, created_at) VALUES (1, 7, 3, 5)",
    "INSERT INTO workflows (id, name, status, shard, args, result, created_at, completed_at, step_count) "
    "VALUES ('wf-done', 'research', 'completed', 1, '{}', '\"ok\"', 10, 20, 1)",
    "INSERT INTO workflows (id, name, status, shard, args, created_at, step_count) "
    "VALUES ('wf-running', 'research', 'running', 2, '{\"x\": 1}', 11, 1)",
    "INSERT INTO workflows (id, name, status, shard, args, created_at, step_count) "
    "VALUES ('wf-idle', 'triage', 'running', 3, '{}', 12, 0)",
    "INSERT INTO steps (workflow_id, number, kind, name, args, status, result, attempt, created_at) "
    "VALUES ('wf-done', 0, 'llm', 'ask', '{}', 'completed', '\"ok\"', 1, 15)",
    "INSERT INTO steps (workflow_id, number, kind, name, args, status, attempt, created_at) "
    "VALUES ('wf-running', 0, 'llm', 'ask', '{}', 'running', 1, 16)",
    "INSERT INTO tasks (id, shard, workflow_created_at, workflow_id, kind, attempt, max_attempts, "
    "initial_backoff, backoff_multiplier, max_backoff, rate_limit_waits, max_rate_limit_waits, available_at, "
    "fencing_token) SELECT id, 2, 11, 'wf-running', 'llm', 1, 3, 1.0, 2.0, 60.0, 0, 10, 0, 0 FROM steps "
    "WHERE workflow_id = 'wf-running'",
    "INSERT INTO replay_queue (workflow_id, shard, workflow_created_at, enqueued_at) "
    "VALUES ('wf-idle', 3, 12, 13)",
]


Rows = dict[str, list[dict[str, Any]]]


def state(db: Database) -> Rows:
    with db.reader.connect() as connection:
        return {
            table.name: sorted(
                (dict(row) for row in connection.execute(sa.select(table)).mappings()), key=repr
            )
            for table in (cluster, workflows, steps, tasks, replay_queue, workflow_counts)
        }


def legacy_state(url: str) -> Rows:
    def read(connection: sa.Connection) -> Rows:
        return {
            f"{PREFIX}{table}": sorted(
                (dict(row) for row in connection.execute(sa.text(f"SELECT * FROM {table}")).mappings()),
                key=repr,
            )
            for table in LEGACY_TABLES
        }

    return run_app(url, read)  # type: ignore[no-any-return]


@pytest.mark.parametrize("revision", ["0003", "0005"])
def test_a_database_from_before_the_prefix_is_moved_with_its_rows(
    database: Database, database_url: str, revision: str
) -> None:
    build_legacy_database(database_url, revision)
    run_app(database_url, lambda c: [c.exec_driver_sql(statement) for statement in LEGACY_ROWS])
    before = legacy_state(database_url)
    assert before[f"{PREFIX}workflow_counts"], "the old triggers counted the workflows"
    assert app_revision(database_url) == revision

    database.migrate()

    assert conveyor_revision(database) == head()
    names = object_names(database)
    assert "alembic_version" not in names["table"], "Conveyor's row was the only one: the table goes"
    assert unprefixed(names) == {kind: set() for kind in names}
    assert schema_differences(database) == []
    # The partial indexes keep their predicates (SQLite rebuilt them, PostgreSQL renamed them).
    assert partial_indexes(database) == {
        str(index.name): normalise(str(index.dialect_options["postgresql"]["where"]))
        for table in metadata.tables.values()
        for index in table.indexes
        if index.dialect_options["postgresql"]["where"] is not None
    }
    after = state(database)
    # The same rows (projected on the columns they had: from 0003, 0005 added ``deadline_at``).
    assert {
        table: [{column: row[column] for column in before[table][0]} for row in after[table]]
        for table in before
    } == before
    # The moved triggers count, and the moved sequence goes on numbering steps.
    with database.writer.begin() as connection:
        connection.execute(
            sa.insert(workflows).values(
                id="wf-new", name="triage", status="running", shard=0, args="{}", created_at=30, step_count=1
            )
        )
        step_id = connection.execute(
            sa.insert(steps)
            .values(
                workflow_id="wf-new",
                number=0,
                kind="llm",
                name="ask",
                args="{}",
                status="running",
                attempt=1,
                created_at=31,
            )
            .returning(steps.c.id)
        ).scalar_one()
        counted = dict(
            connection.execute(
                sa.select(workflow_counts.c.status, workflow_counts.c.total).where(
                    workflow_counts.c.name == "triage"
                )
            ).all()
        )
    assert step_id > max(row["id"] for row in after[f"{PREFIX}steps"])
    assert counted == {"running": 2}


def test_moving_leaves_an_applications_revision_in_alembic_version(
    database: Database, database_url: str
) -> None:
    build_legacy_database(database_url, "0005")
    run_app(
        database_url, lambda c: c.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES ('app2')")
    )

    database.migrate()

    assert conveyor_revision(database) == head()
    assert run_app(
        database_url, lambda c: c.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    ) == [("app2",)]
    assert schema_differences(database) == []


async def test_a_moved_database_runs_workflows(database_url: str, make_stack: MakeStack) -> None:
    build_legacy_database(database_url, "0005")
    run_app(database_url, lambda c: [c.exec_driver_sql(statement) for statement in LEGACY_ROWS[:1]])

    await run_one_workflow(make_stack)


# --- an application whose revision ids look like Conveyor's -----------------------------------------


@pytest.mark.parametrize("app_head", ["0002", "0005"])
def test_an_application_numbering_its_revisions_like_conveyor_keeps_them(
    database: Database, database_url: str, tmp_path: Path, app_head: str
) -> None:
    """Alembic's ``--rev-id`` invites ids like 0001, 0002: the same as Conveyor's old ones.
    Such a row is the application's unless Conveyor's old tables are there too."""
    ids = ["0001", "0002", "0003", "0004", "0005"][: int(app_head)]
    app = tmp_path / "app"
    (app / "versions").mkdir(parents=True)
    (app / "env.py").write_text(APP_ENV)
    for number, (revision, parent) in enumerate(zip(ids, [None, *ids], strict=False)):
        (app / "versions" / f"{revision}.py").write_text(
            f"from alembic import op\nimport sqlalchemy as sa\n"
            f"revision, down_revision, branch_labels, depends_on = {revision!r}, {parent!r}, None, None\n"
            f"def upgrade():\n"
            f"    op.create_table('invoices_{number}', sa.Column('id', sa.Integer(), primary_key=True))\n"
        )
    migrate_app(database_url, app)

    database.migrate()

    assert app_revision(database_url) == app_head
    assert conveyor_revision(database) == head()
    assert schema_differences(database) == []
