"""The triggers that keep ``workflow_counts`` equal to ``SELECT name, status, count(*) FROM workflows``.

Counting ``workflows`` itself reads every row (an index holds them all too), and
``CountWorkflows`` and ``Diagnose`` count every few seconds; with a million finished
workflows that is most of the database's work. Triggers, rather than code in each
write path, keep the counts right for every statement that inserts, re-statuses or
deletes a workflow, in its own transaction, including ones added later. The DDL lives
here, in one place per dialect; migration 0003 runs it through :func:`create_triggers`
and :func:`drop_triggers`.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

# SQLite: row-level triggers; SQLite updates a row in place, so each costs one lookup.
_SQLITE_UPSERT = (
    "INSERT INTO workflow_counts (name, status, total) VALUES (NEW.name, NEW.status, 1) "
    "ON CONFLICT (name, status) DO UPDATE SET total = total + 1;"
)
_SQLITE_DECREMENT = (
    "UPDATE workflow_counts SET total = total - 1 WHERE name = OLD.name AND status = OLD.status;"
)

SQLITE_TRIGGERS = {
    "trg_workflows_count_insert": (
        f"CREATE TRIGGER trg_workflows_count_insert AFTER INSERT ON workflows BEGIN {_SQLITE_UPSERT} END"
    ),
    "trg_workflows_count_update": (
        "CREATE TRIGGER trg_workflows_count_update AFTER UPDATE OF name, status ON workflows "
        "WHEN OLD.status IS NOT NEW.status OR OLD.name IS NOT NEW.name "
        f"BEGIN {_SQLITE_DECREMENT} {_SQLITE_UPSERT} END"
    ),
    "trg_workflows_count_delete": (
        f"CREATE TRIGGER trg_workflows_count_delete AFTER DELETE ON workflows BEGIN {_SQLITE_DECREMENT} END"
    ),
}

# PostgreSQL: statement-level triggers over transition tables, one upsert per (name, status)
# per statement. Row-level ones updated one counter row once per workflow, and within one
# transaction each update walks the row's growing chain of versions: quadratic, minutes
# for a statement that inserts or cancels 100,000 workflows.
_POSTGRES_APPLY = """
    INSERT INTO workflow_counts (name, status, total)
    SELECT name, status, sum(delta) FROM ({changes}) AS changes
    GROUP BY name, status HAVING sum(delta) <> 0
    ON CONFLICT (name, status) DO UPDATE SET total = workflow_counts.total + EXCLUDED.total;
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

POSTGRES_FUNCTIONS = {
    f"conveyor_count_workflows_{event}": (
        f"CREATE FUNCTION conveyor_count_workflows_{event}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        + _POSTGRES_APPLY.format(changes=changes)
        + "RETURN NULL; END $$"
    )
    for event, changes in _POSTGRES_CHANGES.items()
}

POSTGRES_TRIGGERS = {
    f"trg_workflows_count_{event}": (
        f"CREATE TRIGGER trg_workflows_count_{event} AFTER {event.upper()} ON workflows "
        f"REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION conveyor_count_workflows_{event}()"
    )
    for event, referencing in _POSTGRES_REFERENCING.items()
}

#: Counts of the workflows already there when the triggers are created.
BACKFILL = (
    "INSERT INTO workflow_counts (name, status, total) "
    "SELECT name, status, count(*) FROM workflows GROUP BY name, status"
)


def create_triggers(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        statements = [*POSTGRES_FUNCTIONS.values(), *POSTGRES_TRIGGERS.values()]
    else:
        statements = list(SQLITE_TRIGGERS.values())
    for statement in statements:
        connection.exec_driver_sql(statement)


def drop_triggers(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        for name in POSTGRES_TRIGGERS:
            connection.exec_driver_sql(f"DROP TRIGGER {name} ON workflows")
        for name in POSTGRES_FUNCTIONS:
            connection.exec_driver_sql(f"DROP FUNCTION {name}()")
    else:
        for name in SQLITE_TRIGGERS:
            connection.exec_driver_sql(f"DROP TRIGGER {name}")
