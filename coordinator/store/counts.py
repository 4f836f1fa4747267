"""The triggers that keep ``workflow_counts`` equal to ``SELECT name, status, count(*) FROM workflows``.

Counting ``workflows`` itself reads every row (an index holds them all too), and
``CountWorkflows`` and ``Diagnose`` count every few seconds; with a million finished
workflows that is most of the database's work. Triggers, rather than code in each
write path, keep the counts right for every statement that inserts, re-statuses or
deletes a workflow, in its own transaction, including ones added later. The DDL lives
here, not in the migration, so that a test can check it and later migrations reuse it;
migrations run it through :func:`create_triggers` / :func:`drop_triggers`.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

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

POSTGRES_FUNCTION = """
CREATE FUNCTION conveyor_count_workflows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE workflow_counts SET total = total - 1 WHERE name = OLD.name AND status = OLD.status;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO workflow_counts (name, status, total) VALUES (NEW.name, NEW.status, 1)
        ON CONFLICT (name, status) DO UPDATE SET total = workflow_counts.total + 1;
    END IF;
    RETURN NULL;
END
$$
"""

POSTGRES_TRIGGERS = {
    "trg_workflows_count_insert_delete": (
        "CREATE TRIGGER trg_workflows_count_insert_delete AFTER INSERT OR DELETE ON workflows "
        "FOR EACH ROW EXECUTE FUNCTION conveyor_count_workflows()"
    ),
    "trg_workflows_count_update": (
        "CREATE TRIGGER trg_workflows_count_update AFTER UPDATE OF name, status ON workflows FOR EACH ROW "
        "WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.name IS DISTINCT FROM NEW.name) "
        "EXECUTE FUNCTION conveyor_count_workflows()"
    ),
}

#: Counts of the workflows already there when the triggers are created.
BACKFILL = (
    "INSERT INTO workflow_counts (name, status, total) "
    "SELECT name, status, count(*) FROM workflows GROUP BY name, status"
)


def create_triggers(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(POSTGRES_FUNCTION)
        statements = list(POSTGRES_TRIGGERS.values())
    else:
        statements = list(SQLITE_TRIGGERS.values())
    for statement in statements:
        connection.exec_driver_sql(statement)


def drop_triggers(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        for name in POSTGRES_TRIGGERS:
            connection.exec_driver_sql(f"DROP TRIGGER {name} ON workflows")
        connection.exec_driver_sql("DROP FUNCTION conveyor_count_workflows()")
    else:
        for name in SQLITE_TRIGGERS:
            connection.exec_driver_sql(f"DROP TRIGGER {name}")
