"""What a write unit leaves for the engine to do once its transaction commits.

Many units have side effects beyond their own rows: a start, a result, a child started or
finished, a signal or a timer enqueue a replay; a cancel, a bulk cancel, a cleared queue or
a parent that finished or stopped waiting cancel workflows. Each caller used to announce
the few effects it knew of, so an effect of a side effect (a parent woken by a cancelled
child, a child started by a replay) waited for the engine's periodic re-arm, seconds later,
and a cancelled child kept its cached run. Instead, whatever has such an effect notes it on
the connection here, and :meth:`conveyor.coordinator.context.EngineContext.write` acts on
the notes of every unit, whoever called it. Notes of a unit whose transaction then rolled
back are harmless extras (a replay loop with nothing to do, a run dropped from the cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

_KEY = "conveyor.wakeups"


@dataclass
class Wakeups:
    #: A workflow got a replay row: the replay loop has work.
    replays_enqueued: bool = False
    #: Workflows cancelled (not by their own code): drop their cached runs, tell their watchers.
    cancelled: list[str] = field(default_factory=list)


def _noted(connection: Connection) -> Wakeups:
    wakeups = connection.info.get(_KEY)
    if wakeups is None:
        wakeups = connection.info[_KEY] = Wakeups()
    assert isinstance(wakeups, Wakeups)
    return wakeups


def note_replays_enqueued(connection: Connection) -> None:
    _noted(connection).replays_enqueued = True


def note_cancelled(connection: Connection, workflow_ids: list[str]) -> None:
    _noted(connection).cancelled.extend(workflow_ids)


def take_wakeups(connection: Connection) -> Wakeups:
    """What was noted on ``connection`` since the last call (and forget it)."""
    wakeups = connection.info.pop(_KEY, None)
    return wakeups if isinstance(wakeups, Wakeups) else Wakeups()
