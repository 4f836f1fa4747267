"""Connecting to the database, migrating it, and the facts fixed at its creation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, column, delete, func, insert, inspect, select, table, text
from sqlalchemy.engine import Connection, Inspector

from conveyor.backoff import BackoffPolicy
from conveyor.errors import ConfigurationError

from ..clock import now_us
from .dialect import Dialect, dialect_for
from .namespace import LEGACY_NAMES_OPTION, LEGACY_VERSION_TABLE, PREFIX, VERSION_TABLE
from .ownership import DatabaseLock
from .schema import cluster, workflows

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_SHARD_COUNT = 100
#: Between tries of a read or write that failed on a transient error (a dropped connection,
#: a failover): half jittered, so that a retry never comes right on top of the failure.
DATABASE_RETRY_BACKOFF = BackoffPolicy(initial=0.05, maximum=2.0, jitter=0.5)


@dataclass(frozen=True)
class ClusterFacts:
    shard_count: int
    epoch: int
    #: The newest workflow creation time, so new ones keep sorting after it.
    last_created_at: int


class Database:
    """The engines of one database: a writer (used by one thread) and a reader pool."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "FULL",
        reader_pool_size: int = 4,
        sqlite_busy_timeout: float = 30.0,
    ) -> None:
        self.dialect: Dialect = dialect_for(
            url, sqlite_synchronous=sqlite_synchronous, sqlite_busy_timeout=sqlite_busy_timeout
        )
        self.writer: Engine = self.dialect.create_engine(writer=True, pool_size=1)
        self.reader: Engine = self.dialect.create_engine(writer=False, pool_size=reader_pool_size)

    def migrate(self) -> None:
        """Create or upgrade Conveyor's tables to the newest migration, in one transaction.

        Conveyor's revision lives in ``conveyor_alembic_version``; a database from before
        that (its revision in ``alembic_version``) has the row moved first, and its objects
        renamed by migration 0006. An application's own ``alembic_version`` is left alone.
        """
        with self.writer.connect() as connection, self.dialect.migration_lock(connection):
            legacy = adopt_legacy_revision(connection)
            if legacy is not None:
                log.info(
                    "moving Conveyor's revision %s from %s to %s and prefixing its tables with %s",
                    legacy,
                    LEGACY_VERSION_TABLE,
                    VERSION_TABLE,
                    PREFIX,
                )
            config = migration_config(connection, legacy_names=legacy is not None)
            command.upgrade(config, "head")
            connection.commit()

    def record_holder(self, lock: DatabaseLock) -> None:
        """Name the coordinator holding ``lock`` in the database, for a second one's refusal."""
        with self.writer.begin() as connection:
            lock.record_holder(connection)

    def open_cluster(self, requested_shards: int | None) -> ClusterFacts:
        """Read the cluster row, creating it with ``requested_shards`` on a new database.

        The shard count is fixed per database: every workflow's tasks live on the
        shard its id hashed to when it started.
        """
        with self.writer.begin() as connection:
            row = connection.execute(select(cluster.c.shard_count, cluster.c.epoch)).first()
            if row is None:
                shard_count = requested_shards or DEFAULT_SHARD_COUNT
                connection.execute(
                    insert(cluster).values(id=1, shard_count=shard_count, epoch=1, created_at=now_us())
                )
                log.info("initialized a new database with %d shards", shard_count)
                return ClusterFacts(shard_count, 1, 0)
            if requested_shards is not None and requested_shards != row.shard_count:
                raise ConfigurationError(
                    f"this database was created with {row.shard_count} shards, but --shards "
                    f"{requested_shards} was given; the shard count is fixed per database. Drop "
                    "--shards, or point --db at a new database"
                )
            last_created_at = connection.execute(select(func.max(workflows.c.created_at))).scalar() or 0
            return ClusterFacts(row.shard_count, row.epoch, last_created_at)

    def dispose(self) -> None:
        self.writer.dispose()
        self.reader.dispose()


def migration_config(connection: Connection, *, legacy_names: bool = False) -> Config:
    """Alembic's configuration for running Conveyor's migrations on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    config.attributes[LEGACY_NAMES_OPTION] = legacy_names
    return config


def adopt_legacy_revision(connection: Connection) -> str | None:
    """Move Conveyor's revision from ``alembic_version`` to its own version table; returns it.

    Conveyor before its own namespace kept its revision in Alembic's default table, which an
    application sharing the database also uses — possibly with ids like Conveyor's (Alembic's
    ``--rev-id`` invites 0001, 0002...). So the revision is read from Conveyor's old tables
    themselves (:func:`legacy_schema_revision`), and only that row moves; the table is dropped
    if that leaves it empty, and kept with the application's rows otherwise. None when there
    is nothing to move (a new database, one already moved, or only an application's history).
    It runs in the caller's transaction, with the migrations after it, so a failure leaves
    the database as it was.
    """
    inspector = inspect(connection)
    if inspector.has_table(VERSION_TABLE) or not inspector.has_table(LEGACY_VERSION_TABLE):
        return None
    revision = legacy_schema_revision(inspector)
    if revision is None:
        return None  # no Conveyor tables of old: every row there is an application's
    legacy = table(LEGACY_VERSION_TABLE, column("version_num"))
    rows = set(connection.execute(select(legacy.c.version_num)).scalars())
    if revision not in rows:
        held = ", ".join(sorted(rows)) or "no row"
        raise ConfigurationError(
            f"this database holds Conveyor's tables of before its namespace at revision {revision}, "
            f"but {LEGACY_VERSION_TABLE} does not record it (it holds {held}); "
            f"restore the row ('INSERT INTO {LEGACY_VERSION_TABLE} VALUES ('{revision}')') and start "
            "the coordinator again"
        )
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    context.stamp(ScriptDirectory(str(MIGRATIONS)), revision)
    connection.execute(delete(legacy).where(legacy.c.version_num == revision))
    if connection.execute(select(func.count()).select_from(legacy)).scalar_one() == 0:
        connection.execute(text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))
    return revision


def legacy_schema_revision(inspector: Inspector) -> str | None:
    """The revision (0001 to 0005) of Conveyor's unprefixed tables, read from what they contain;
    None if they are not there. Each revision added something the next check looks for."""
    if not (
        inspector.has_table("cluster")
        and inspector.has_table("replay_queue")
        and inspector.has_table("tasks")
    ):
        return None
    cluster_columns = {c["name"] for c in inspector.get_columns("cluster")}
    task_columns = {c["name"] for c in inspector.get_columns("tasks")}
    if not ({"shard_count", "epoch"} <= cluster_columns and "fencing_token" in task_columns):
        return None  # an application's tables of those names
    if "deadline_at" in task_columns:
        return "0005"
    if inspector.has_table("write_commits"):
        return "0004"
    if "delayed" in task_columns:
        return "0003"
    if "ix_workflows_name_status" in {i["name"] for i in inspector.get_indexes("workflows")}:
        return "0002"
    return "0001"
