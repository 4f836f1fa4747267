"""What a write transaction leaves for the engine's loops to do once it commits.

A replay row can be written by many units: a start, a result, a child started or finished,
a cancel that reaches a waiting parent, an operator's clear. Each loop used to be woken by
the caller of its own few kinds of write, so a replay enqueued as a side effect (a parent
whose child was cancelled, a child started by a replay) waited for the engine's periodic
re-arm, seconds later. Instead, whatever enqueues a replay notes it on the connection here,
and :meth:`conveyor.coordinator.context.EngineContext.write` wakes the replay loop after
every unit that did, whoever called it.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

_REPLAYS_ENQUEUED = "conveyor.replays_enqueued"


def note_replays_enqueued(connection: Connection) -> None:
    """This transaction gave at least one workflow a replay row."""
    connection.info[_REPLAYS_ENQUEUED] = True


def take_replays_enqueued(connection: Connection) -> bool:
    """Whether a replay was enqueued since the last call (and forget it)."""
    return bool(connection.info.pop(_REPLAYS_ENQUEUED, False))
