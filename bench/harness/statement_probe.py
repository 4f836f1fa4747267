"""``python -m bench.harness.statement_probe coordinator ...``: the coordinator, counting its SQL.

Runs ``conveyor.cli`` unchanged in this process after hooking SQLAlchemy's engine
events, so the benchmark learns what the coordinator asks of its database without a
line of coordinator code knowing: statements by verb (INSERT, UPDATE, SELECT,
SAVEPOINT...) and rows they reported, commits and rollbacks, each split by the thread
that ran them (the single writer thread, ``conveyor-writer``, against every other
reader). The counts go to the JSON file named by ``$CONVEYOR_BENCH_STATEMENT_COUNTS``
every second and at exit, so a run that ends with SIGTERM still leaves them.

The hooks cost a few microseconds per statement: a run measured with them is for
counting, and CPU per step is better taken from a run without (``python -m bench overhead``).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

OUTPUT_ENV = "CONVEYOR_BENCH_STATEMENT_COUNTS"
WRITER_THREAD = "conveyor-writer"
DUMP_INTERVAL = 1.0
#: Verbs whose ``rowcount`` says how many rows they wrote.
WRITE_VERBS = frozenset({"INSERT", "UPDATE", "DELETE"})


class StatementCounts:
    """Counters keyed ``"<role>:<verb>"``; role is ``writer`` or ``reader``."""

    def __init__(self) -> None:
        self.statements: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.commits: Counter[str] = Counter()
        self.rollbacks: Counter[str] = Counter()
        #: SQLite's ``total_changes`` at the last statement (the writer's one connection).
        self.total_changes = 0
        self._lock = threading.Lock()

    @staticmethod
    def role() -> str:
        return "writer" if threading.current_thread().name == WRITER_THREAD else "reader"

    def statement(self, sql: str, rowcount: int, total_changes: int | None) -> None:
        """One statement; ``total_changes`` is SQLite's running count of the connection's row changes."""
        verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "EMPTY"
        key = f"{self.role()}:{verb}"
        with self._lock:
            self.statements[key] += 1
            if total_changes is not None:
                # SQLite's own count includes rows written by triggers, which rowcount leaves out.
                if verb in WRITE_VERBS:
                    self.rows[key] += max(0, total_changes - self.total_changes)
                self.total_changes = total_changes
            elif verb in WRITE_VERBS and rowcount > 0:
                self.rows[key] += rowcount

    def commit(self) -> None:
        with self._lock:
            self.commits[self.role()] += 1

    def rollback(self) -> None:
        with self._lock:
            self.rollbacks[self.role()] += 1

    def as_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pid": os.getpid(),
                "statements": dict(self.statements),
                "rows": dict(self.rows),
                "commits": dict(self.commits),
                "rollbacks": dict(self.rollbacks),
            }


def install(counts: StatementCounts) -> None:
    """Count every statement, commit and rollback of every engine in this process."""

    def after_cursor_execute(
        conn: Connection, cursor: Any, statement: str, *_args: Any, **_kwargs: Any
    ) -> None:
        total_changes = None
        if counts.role() == "writer":
            total_changes = getattr(conn.connection.dbapi_connection, "total_changes", None)
        counts.statement(statement, getattr(cursor, "rowcount", -1), total_changes)

    event.listen(Engine, "after_cursor_execute", after_cursor_execute)
    event.listen(Engine, "commit", lambda _conn: counts.commit())
    event.listen(Engine, "rollback", lambda _conn: counts.rollback())


def dump(counts: StatementCounts, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(counts.as_json()))
    temporary.replace(path)  # a reader never sees half a file


def main() -> None:
    path = Path(os.environ[OUTPUT_ENV])
    counts = StatementCounts()
    install(counts)
    stop = threading.Event()

    def dump_until_stopped() -> None:
        while not stop.wait(DUMP_INTERVAL):
            dump(counts, path)

    threading.Thread(target=dump_until_stopped, name="statement-counts", daemon=True).start()

    def final_dump() -> None:
        stop.set()
        dump(counts, path)

    atexit.register(final_dump)
    sys.argv = ["conveyor", *sys.argv[1:]]
    runpy.run_module("conveyor.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
