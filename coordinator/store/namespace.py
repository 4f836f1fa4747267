"""The names Conveyor owns in a database it may share with an application.

Every table, index, constraint, trigger, function and sequence Conveyor creates is named
``conveyor_...``, and its Alembic history lives in its own version table,
``conveyor_alembic_version``, so Conveyor can be migrated into a database (or PostgreSQL
schema) that already holds another Alembic-managed application, and back out of its way:

* ``migrate()`` never reads or writes the application's ``alembic_version``;
* the application's ``alembic revision --autogenerate`` leaves Conveyor's tables alone
  when its ``env.py`` filters them out with :func:`owns_table`::

      context.configure(..., include_name=lambda name, type_, _: type_ != "table" or not owns_table(name))

Databases created before the prefix (tables ``workflows``, ``tasks``, ... and Conveyor's
revision in ``alembic_version``) are moved to these names by migration 0006; see
:meth:`conveyor.coordinator.store.database.Database.migrate`.
"""

from __future__ import annotations

#: The first word of every database object Conveyor owns. Application tables must not start with it.
PREFIX = "conveyor_"

#: Conveyor's Alembic version table (Alembic's default, ``alembic_version``, is left to the application).
VERSION_TABLE = f"{PREFIX}alembic_version"

#: Where Conveyor before the prefix kept its revision, and where an application keeps its own.
LEGACY_VERSION_TABLE = "alembic_version"


def owns_table(name: str) -> bool:
    """Whether the table ``name`` is Conveyor's (its data tables and its version table)."""
    return name.startswith(PREFIX)


def prefixed(name: str) -> str:
    """The name Conveyor gives the object once called ``name`` (``workflows`` -> ``conveyor_workflows``)."""
    return f"{PREFIX}{name}"


#: The Alembic option (``context.configure(conveyor_legacy_names=...)``) that tells migrations
#: 0001-0005 they run on a database from before the prefix, whose objects keep their old names
#: until migration 0006 renames them.
LEGACY_NAMES_OPTION = "conveyor_legacy_names"


def migration_name(name: str) -> str:
    """The name a migration before 0006 gives the object it calls ``name``, in the running migration.

    A new database gets the prefixed name from its first migration, so Conveyor never
    creates an object under a name an application may be using; a database from before
    the prefix keeps the old names until 0006 moves them. Migrations after 0006 write the
    prefixed names themselves: every database has them by then.
    """
    from alembic import op

    return name if op.get_context().opts.get(LEGACY_NAMES_OPTION, False) else prefixed(name)
