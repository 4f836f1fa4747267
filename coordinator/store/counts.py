"""The triggers that keep ``conveyor_workflow_counts`` equal to counting ``conveyor_workflows``.

Counting ``workflows`` itself reads every row (an index holds them all too), and
``CountWorkflows`` and ``Diagnose`` count every few seconds; with a million finished
workflows that is most of the database's work. Triggers, rather than code in each
write path, keep the counts right for every statement that inserts, re-statuses or
deletes a workflow, in its own transaction, including ones added later. The DDL lives
here, in one place per dialect; migration 0003 runs it through :func:`create_triggers`
and :func:`drop_triggers`, and migration 0006 moves them to the prefixed names
(:mod:`conveyor.coordinator.store.namespace`).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from .namespace import PREFIX


def _sqlite_triggers(prefix: str) -> dict[str, str]:
    """SQLite: row-level triggers; SQLite updates a row in place, so each costs one lookup."""
    workflows, counts = f"{prefix}workflows", f"{prefix}workflow_counts"
    upsert = (
        f"INSERT INTO {counts} (name, status, total) VALUES (NEW.name, NEW.status, 1) "
        "ON CONFLICT (name, status) DO UPDATE SET total = total + 1;"
    )
    decrement = f"UPDATE {counts} SET total = total - 1 WHERE name = OLD.name AND status = OLD.status;"
    return {
        f"{prefix}trg_workflows_count_insert": (
            f"CREATE TRIGGER {prefix}trg_workflows_count_insert AFTER INSERT ON {workflows} "
            f"BEGIN {upsert} END"
        ),
        f"{prefix}trg_workflows_count_update": (
            f"CREATE TRIGGER {prefix}trg_workflows_count_update AFTER UPDATE OF name, status ON {workflows} "
            "WHEN OLD.status IS NOT NEW.status OR OLD.name IS NOT NEW.name "
            f"BEGIN {decrement} {upsert} END"
        ),
        f"{prefix}trg_workflows_count_delete": (
            f"CREATE TRIGGER {prefix}trg_workflows_count_delete AFTER DELETE ON {workflows} "
            f"BEGIN {decrement} END"
        ),
    }


# PostgreSQL: statement-level triggers over transition tables, one upsert per (name, status)
# per statement. Row-level ones updated one counter row once per workflow, and within one
# transaction each update walks the row's growing chain of versions: quadratic, minutes
# for a statement that inserts or cancels 100,000 workflows.
_POSTGRES_APPLY = """
    INSERT INTO {counts} (name, status, total)
    SELECT name, status, sum(delta) FROM ({changes}) AS changes
    GROUP BY name, status HAVING sum(delta) <> 0
    ON CONFLICT (name, status) DO UPDATE SET total = {counts}.total + EXCLUDED.total;
"""
_POSTGRES_CHANGES = {
    "insert": "SELECT name, status, 1 AS delta FROM new_rows",
    "update": "SELECT name, status, 1 AS delta FROM new_rows UNION ALL SELECT name, status, -1 FROM old_rows",
    "delete": "SELECT name, status, -1 AS delta FROM old_rows",
}
_POSTGRES_REFERENCING = {
    "insert": "NEW TABLE AS new_rows",
    "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "OLD TABLE AS old_rows",
}


def _postgres_functions(prefix: str) -> dict[str, str]:
    # Named conveyor_... before the prefix too: migration 0006 drops and recreates them.
    return {
        f"conveyor_count_workflows_{event}": (
            f"CREATE FUNCTION conveyor_count_workflows_{event}() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN"
            + _POSTGRES_APPLY.format(changes=changes, counts=f"{prefix}workflow_counts")
            + "RETURN NULL; END $$"
        )
        for event, changes in _POSTGRES_CHANGES.items()
    }


def _postgres_triggers(prefix: str) -> dict[str, str]:
    return {
        f"{prefix}trg_workflows_count_{event}": (
            f"CREATE TRIGGER {prefix}trg_workflows_count_{event} AFTER {event.upper()} ON {prefix}workflows "
            f"REFERENCING {referencing} FOR EACH STATEMENT "
            f"EXECUTE FUNCTION conveyor_count_workflows_{event}()"
        )
        for event, referencing in _POSTGRES_REFERENCING.items()
    }


def backfill(prefix: str = PREFIX) -> str:
    """Counts of the workflows already there when the triggers are created."""
    return (
        f"INSERT INTO {prefix}workflow_counts (name, status, total) "
        f"SELECT name, status, count(*) FROM {prefix}workflows GROUP BY name, status"
    )


def trigger_names(dialect_name: str, prefix: str = PREFIX) -> list[str]:
    triggers = _postgres_triggers(prefix) if dialect_name == "postgresql" else _sqlite_triggers(prefix)
    return list(triggers)


def create_triggers(connection: Connection, prefix: str = PREFIX) -> None:
    """Create the triggers on ``{prefix}workflows`` (``prefix`` is empty before migration 0006)."""
    if connection.dialect.name == "postgresql":
        statements = [*_postgres_functions(prefix).values(), *_postgres_triggers(prefix).values()]
    else:
        statements = list(_sqlite_triggers(prefix).values())
    for statement in statements:
        connection.exec_driver_sql(statement)


def drop_triggers(connection: Connection, prefix: str = PREFIX) -> None:
    if connection.dialect.name == "postgresql":
        for name in _postgres_triggers(prefix):
            connection.exec_driver_sql(f"DROP TRIGGER {name} ON {prefix}workflows")
        for name in _postgres_functions(prefix):
            connection.exec_driver_sql(f"DROP FUNCTION {name}()")
    else:
        for name in _sqlite_triggers(prefix):
            connection.exec_driver_sql(f"DROP TRIGGER {name}")
