"""Shared fixtures: a fresh database on each dialect, and a real stack in-process.

Every test that takes ``database_url`` runs twice: on a new SQLite file and on a
new PostgreSQL schema. PostgreSQL comes from ``$CONVEYOR_TEST_POSTGRES_URL`` (set by
``make test`` and ``.ci/run``); with the variable empty those runs are skipped, and
with it set but the server down they fail, loudly.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conveyor.workflow import WorkflowRegistry
from support import Stack

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "")
DIALECTS = ["sqlite", "postgresql"]


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'conveyor.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("CONVEYOR_TEST_POSTGRES_URL is empty: PostgreSQL runs skipped (make test sets it)")
    yield from _postgres_schema(POSTGRES_URL)


def _postgres_schema(base_url: str) -> Iterator[str]:
    """A new schema per test, reached through ``search_path``; dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    # Pre-ping: a chaos test may have restarted the server since the schema was created.
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as error:
        pytest.fail(
            f"PostgreSQL at {base_url} is unreachable ({error.orig}); start it "
            "(pg_ctlcluster ... start) or set CONVEYOR_TEST_POSTGRES_URL= to skip PostgreSQL runs"
        )
    separator = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
async def make_stack(database_url: str) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    """``await make_stack(registry, **coordinator_config)`` → a running :class:`Stack`."""
    stacks: list[Stack] = []

    async def make(registry: WorkflowRegistry, **config: Any) -> Stack:
        stack = Stack(database_url, registry, **config)
        stacks.append(stack)
        await stack.start_coordinator()
        return stack

    yield make
    for stack in stacks:
        await stack.close()


# --------------------------------------------------------------------------- hang report

#: Share of a test's pytest-timeout after which the report below is written.
HANG_REPORT_AT = 0.8


class _HangWatch:
    """One daemon thread for the whole run (a thread per test would show up in tests that
    count threads): it writes the report once the running test passes its report time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._test: tuple[str, float] | None = None
        threading.Thread(target=self._watch, name="hang-report", daemon=True).start()

    def watch(self, nodeid: str, report_after: float) -> None:
        with self._lock:
            self._test = (nodeid, time.monotonic() + report_after) if report_after > 0 else None

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            with self._lock:
                due = self._test is not None and time.monotonic() >= self._test[1]
                nodeid = self._test[0] if self._test is not None else ""
                if due:
                    self._test = None  # once per test
            if due:
                _write_hang_report(nodeid)


_hang_watch: _HangWatch | None = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Before pytest-timeout ends a hung test, write every asyncio task's stack to stderr.

    pytest-timeout prints the threads' stacks only, and in an asyncio test the main thread's
    stack just shows the event loop waiting: what hangs is one of the loop's tasks.
    """
    global _hang_watch
    if _hang_watch is None:
        _hang_watch = _HangWatch()
    _hang_watch.watch(item.nodeid, _timeout_of(item) * HANG_REPORT_AT)
    try:
        yield
    finally:
        _hang_watch.watch("", 0)


def _timeout_of(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    configured = item.config.getoption("timeout", None) or item.config.getini("timeout")
    return float(configured or 0)


def _write_hang_report(nodeid: str) -> None:
    lines = [f"\n===== hang report: {nodeid} is still running =====\n"]
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]
    for loop in loops:
        for _ in range(5):  # the loop's thread may change the task set while it is read
            try:
                tasks = list(asyncio.all_tasks(loop))
                break
            except RuntimeError:
                continue
        else:
            tasks = []
        lines.append(f"--- {len(tasks)} tasks of {loop!r}\n")
        for task in tasks:
            lines.append(f"* {task!r}\n")
            lines.extend("    " + line for line in _awaiting(task.get_coro()))
    for thread_id, frame in sys._current_frames().items():
        lines.append(f"--- thread {thread_id}\n")
        lines.extend(traceback.format_stack(frame))
    sys.stderr.write("".join(lines))
    sys.stderr.flush()


def _awaiting(coroutine: Any) -> list[str]:
    """Where ``coroutine`` waits, down its chain of awaits (``Task.get_stack`` shows one frame)."""
    lines: list[str] = []
    while coroutine is not None:
        frame = getattr(coroutine, "cr_frame", None) or getattr(coroutine, "ag_frame", None)
        if frame is not None:
            lines.extend(traceback.format_stack(frame, limit=1))
        coroutine = getattr(coroutine, "cr_await", None) or getattr(coroutine, "ag_await", None)
    return lines
