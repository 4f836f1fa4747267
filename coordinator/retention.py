"""Retention: purging finished workflows, by operator request (``PurgeWorkflows``) and in the
background once they are older than ``--retention``.

Both purge in batches of ``retention_batch_size`` workflows, each batch one short write
unit (:func:`.store.retention.purge_oldest`), and rest between batches for a multiple of the
time the batch took: the writer is shared with the hot path (claims, results, replays), and
a backlog of a million expired workflows must not hold it for minutes. A batch is
independent of the next, so a restart between two loses nothing: the next pass purges
what is left.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from conveyor.errors import InvalidArgument

from .clock import now_us
from .context import EngineContext
from .model import WorkflowStatus
from .store import retention
from .store.retention import FINISHED_STATUSES, PurgeSelection

log = logging.getLogger(__name__)

#: Between two batches, rest this many times as long as the last batch took (so a backlog
#: takes at most a fifth of the writer's time)...
PAUSE_FACTOR = 4.0
#: ...and at least this long, so other writes get the writer even when batches are quick.
MIN_PAUSE = 0.02
#: Workflow ids a dry run lists, for the operator to check the filter.
SAMPLE_SIZE = 20


@dataclass(frozen=True)
class PurgeOutcome:
    #: Workflows that matched (at most the limit); with a dry run, what a purge would delete.
    matched: int
    #: Workflows deleted (0 with a dry run).
    purged: int
    #: The first matches by finish time (at most :data:`SAMPLE_SIZE`).
    sample: list[str]


class Retention:
    """PurgeWorkflows and the retention loop."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    async def purge_workflows(
        self, finished_before: int, statuses: Collection[WorkflowStatus], limit: int, dry_run: bool
    ) -> PurgeOutcome:
        """Purge the workflows that finished before ``finished_before`` (µs) in ``statuses``
        (empty: every finished status), oldest finish first; at most ``limit`` (0: no limit)."""
        if limit < 0:
            raise InvalidArgument(f"limit must not be negative (0 means no limit), not {limit}")
        running = sorted(status.value for status in statuses if status not in FINISHED_STATUSES)
        if running:
            raise InvalidArgument(
                f"status {', '.join(running)} cannot be purged: only finished workflows "
                "(completed, failed, cancelled) are"
            )
        # A bound in the future would purge workflows that finish during the purge; now is the latest.
        selection = PurgeSelection(
            min(finished_before, now_us()),
            tuple(s for s in FINISHED_STATUSES if s in statuses) if statuses else FINISHED_STATUSES,
        )

        def preview(connection: Connection) -> tuple[int, list[str]]:
            return (
                retention.count(connection, selection, limit),
                retention.oldest(connection, selection, min(SAMPLE_SIZE, limit or SAMPLE_SIZE)),
            )

        matched, sample = await self.ctx.read(preview, snapshot=True)
        if dry_run or not matched:
            return PurgeOutcome(matched, 0, sample)
        purged = await self.purge_batches(selection, limit)
        log.warning(
            "operator purged %d finished workflow(s) (%s) with their journals",
            purged,
            ", ".join(status.value for status in selection.statuses),
        )
        return PurgeOutcome(matched, purged, sample)

    async def purge_batches(self, selection: PurgeSelection, limit: int = 0) -> int:
        """Purge ``selection`` batch by batch until it is empty (or ``limit`` went); returns how many went."""
        size = self.ctx.config.retention_batch_size
        purged = 0
        while limit == 0 or purged < limit:
            batch = size if limit == 0 else min(size, limit - purged)
            began = time.monotonic()
            deleted = await self.ctx.write(
                functools.partial(retention.purge_oldest, selection=selection, limit=batch), "purge workflows"
            )
            purged += deleted
            self.ctx.stats.workflows_purged += deleted
            if deleted < batch:
                break
            await asyncio.sleep(max(MIN_PAUSE, (time.monotonic() - began) * PAUSE_FACTOR))
        return purged

    async def retention_loop(self) -> None:
        """Purge what finished more than ``--retention`` ago, then look again (every ``retention_interval``
        at most, sooner for a short retention).

        Level-triggered: each pass reads what has expired by now, so a pass cut short (a
        database outage, a restart) leaves nothing behind that the next pass misses.
        """
        period = self.ctx.config.retention
        if period is None:
            return
        while True:
            cutoff = now_us() - int(period * 1e6)
            purged = await self.purge_batches(PurgeSelection(cutoff))
            if purged:
                log.info("retention purged %d workflow(s) that finished more than %gs ago", purged, period)
            # A short retention (a benchmark's seconds) is checked more often than a long one.
            await asyncio.sleep(min(self.ctx.config.retention_interval, period / 4))
