"""The live status page (``conveyor coordinator --http-port``): read-only, on the coordinator's loop.

``/`` serves a static page (``static/``: HTML, JS and CSS, no build step, nothing
fetched from elsewhere) that polls two JSON endpoints and redraws:

* ``/api/overview``: workflow totals, per-shard queue depth, executors, the epoch,
  the replay queue and the latest failures;
* ``/api/staircase?rows=N``: the newest N workflows in start order with their
  steps' queue and run times, drawn as the FIFO staircase.

Every answer is cached for a second, so any number of open pages costs the
database at most two bounded reads per second. Nothing here writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web
from sqlalchemy.engine import Connection

from conveyor.monitoring import Authorize, MonitoringServer

from .reports import DiagnoseReport
from .store import status

log = logging.getLogger(__name__)

T = TypeVar("T")


class StatusSource(Protocol):
    """What the page reads from the coordinator (:class:`~conveyor.coordinator.engine.Coordinator`)."""

    async def diagnose(self, max_violations: int, *, check_invariants: bool = True) -> DiagnoseReport: ...

    async def read(self, query: Callable[[Connection], T]) -> T: ...


STATIC = Path(__file__).resolve().parent / "static"
#: Seconds an answer is reused for.
CACHE_SECONDS = 1.0
DEFAULT_STAIRCASE_ROWS = 500
MAX_STAIRCASE_ROWS = 5000
LATEST_FAILURES = 10
#: Most answers cached at once (the overview and a few staircase sizes are what pages ask for).
MAX_CACHED = 8


def _ms(us: int | None) -> float | None:
    """Microseconds to the milliseconds JavaScript's Date uses."""
    return None if us is None else us / 1000


class _Cache:
    """One value per key, recomputed when older than :data:`CACHE_SECONDS`.

    Holds at most :data:`MAX_CACHED` values, and none past its second: keys come from
    the query string, and keeping every distinct ``?rows=`` forever let anyone who
    reaches the page grow the coordinator's memory without bound.
    """

    def __init__(self) -> None:
        self._values: dict[object, tuple[float, Any]] = {}
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._values)

    async def get(self, key: object, compute: Callable[[], Awaitable[Any]]) -> Any:
        async with self._lock:
            cached = self._values.get(key)
            if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
                return cached[1]
            value = await compute()
            now = time.monotonic()
            self._values = {k: v for k, v in self._values.items() if now - v[0] < CACHE_SECONDS}
            while len(self._values) >= MAX_CACHED:
                del self._values[next(iter(self._values))]  # the oldest: dicts keep insertion order
            self._values[key] = (now, value)
            return value


class StatusPage:
    """The aiohttp application and its site; ``await start(host, port)``, then ``await stop()``."""

    def __init__(self, coordinator: StatusSource, authorize: Authorize | None = None) -> None:
        self._coordinator = coordinator
        self._cache = _Cache()
        app = MonitoringServer.application(authorize)
        app.router.add_get("/", self._index)
        app.router.add_get("/api/overview", self._overview)
        app.router.add_get("/api/staircase", self._staircase)
        app.router.add_static("/static/", STATIC)
        self._server = MonitoringServer(app)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Serve on ``host:port`` (0: any free port); returns the bound port."""
        self.port = await self._server.start(host, port)
        return self.port

    async def stop(self) -> None:
        await self._server.stop()

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _overview(self, request: web.Request) -> web.Response:
        return web.json_response(await self._cache.get("overview", self._compute_overview))

    async def _staircase(self, request: web.Request) -> web.Response:
        try:
            rows = int(request.query.get("rows", DEFAULT_STAIRCASE_ROWS))
        except ValueError:
            raise web.HTTPBadRequest(text="rows must be a whole number") from None
        if not 1 <= rows <= MAX_STAIRCASE_ROWS:
            raise web.HTTPBadRequest(text=f"rows must be between 1 and {MAX_STAIRCASE_ROWS}")
        return web.json_response(
            await self._cache.get(("staircase", rows), lambda: self._compute_staircase(rows))
        )

    async def _compute_overview(self) -> dict[str, Any]:
        report = await self._coordinator.diagnose(0, check_invariants=False)
        failures = await self._coordinator.read(lambda c: status.latest_failures(c, LATEST_FAILURES))
        return _overview_json(report, failures)

    async def _compute_staircase(self, rows: int) -> dict[str, Any]:
        staircase = await self._coordinator.read(lambda c: status.staircase(c, rows))
        return {
            "now": time.time() * 1000,
            "rows": [
                {
                    "id": row.workflow_id,
                    "name": row.name,
                    "status": row.status,
                    "created_at": _ms(row.created_at),
                    "completed_at": _ms(row.completed_at),
                    "steps": [
                        {
                            "number": step.number,
                            "name": step.name,
                            "status": step.status,
                            "created_at": _ms(step.created_at),
                            "started_at": _ms(step.started_at),
                            "completed_at": _ms(step.completed_at),
                        }
                        for step in row.steps
                    ],
                }
                for row in staircase
            ],
        }


def _overview_json(report: DiagnoseReport, failures: list[status.Failure]) -> dict[str, Any]:
    leaseholders: dict[int, list[str]] = {}
    for view in report.executors:
        for shard in view.session.shards:
            leaseholders.setdefault(shard, []).append(view.session.executor_id)
    return {
        "generated_at": _ms(report.generated_at),
        "epoch": report.epoch,
        "shard_count": report.shard_count,
        "workflows": {
            name: report.workflows_by_status.get(name, 0)
            for name in ("running", "completed", "failed", "cancelled")
        },
        "replay_queue": report.replay_queue_depth,
        "shards": [
            {
                "shard": depth.shard,
                "queued": depth.queued,
                "delayed": depth.delayed,
                "claimed": depth.claimed,
                "replay": depth.replay_depth,
                "oldest_age_s": (
                    None
                    if depth.oldest_queued_created_at is None
                    else max(0, report.generated_at - depth.oldest_queued_created_at) / 1e6
                ),
                "executors": leaseholders.get(depth.shard, []),
            }
            for depth in report.shards
        ],
        "executors": [
            {
                "id": view.session.executor_id,
                "state": view.session.state.value,
                "epoch": view.session.epoch,
                "capacity": view.session.capacity,
                "claimed": view.claimed_tasks,
                "shards": len(view.session.shards),
                "task_kinds": sorted(view.session.task_kinds),
                "heartbeat_age_s": view.seconds_since_heartbeat,
            }
            for view in report.executors
        ],
        "failures": [
            {
                "id": failure.workflow_id,
                "name": failure.name,
                "error": failure.error,
                "created_at": _ms(failure.created_at),
                "completed_at": _ms(failure.completed_at),
            }
            for failure in failures
        ],
    }
