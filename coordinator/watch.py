"""WatchWorkflow: streaming a workflow's changes to its watchers, driven by the engine's own events.

A watcher costs the database one read when it starts (the workflow and its journal); after
that the workflow is read again only when the engine reports that it may have changed:

* a replay took it off the replay queue (steps started, the workflow finished; this also
  covers timers, whose firing is followed by a replay) — :meth:`WatchHub.changed`;
* a result arrived for one of its steps in progress (a step finished, or failed an attempt)
  — :meth:`WatchHub.tasks_changed`, matched by task id against the steps in progress the
  hub read last, so the hot path costs a dictionary lookup per result and no query;
* it was cancelled, alone or in bulk — :meth:`WatchHub.changed`; operator actions that
  name no workflow (clearing a queue, failing pending tasks) mark every watched one.

The reads are coalesced: one pass of :meth:`WatchHub.pump_loop` re-reads every workflow
marked since the last pass, in one read transaction, for all of its watchers at once,
and reads only the steps that can still change (from the first unfinished one).

As a safety net for a change no event announced (a path added later that forgets to
call the hub), every :data:`CATCH_UP_INTERVAL` seconds one pass reads the (status, step
count) of every watched workflow — a query per 500 watched workflows, not one per
watcher — and re-reads those that moved. The engine never polls per watcher.

At most ``max_watchers`` streams are open at once (``--max-watchers``): each holds a queue and a
gRPC stream, so one more is refused with RESOURCE_EXHAUSTED rather than letting clients grow the
coordinator's memory without bound. A watcher is removed as soon as its stream ends, however it
ends (finished, cancelled by the client, the connection dropped).

Coordinator shutdown ends every watch with UNAVAILABLE; clients watch again after a restart
(their first message is then the current snapshot, so nothing is missed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from enum import Enum

from conveyor.errors import NotFound, ResourceExhausted, Unavailable

from .model import StepStatus, WorkflowStatus
from .store import watching
from .store.reader import Reader
from .store.watching import WatchedState
from .store.workflows import StepRecord, WorkflowRecord

log = logging.getLogger(__name__)

#: Seconds between the coalesced checks for changes no event announced.
CATCH_UP_INTERVAL = 5.0


class WatchEventKind(Enum):
    #: The first message: the workflow with its whole journal.
    SNAPSHOT = "snapshot"
    STEP_STARTED = "step_started"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    STEP_CANCELLED = "step_cancelled"
    #: The last message: the workflow finished (completed, failed or cancelled).
    WORKFLOW_FINISHED = "workflow_finished"


_STEP_ENDS = {
    StepStatus.COMPLETED: WatchEventKind.STEP_COMPLETED,
    StepStatus.FAILED: WatchEventKind.STEP_FAILED,
    StepStatus.CANCELLED: WatchEventKind.STEP_CANCELLED,
}


@dataclass(frozen=True)
class WatchEvent:
    kind: WatchEventKind
    #: The workflow as of this event (its journal only in the snapshot).
    workflow: WorkflowRecord
    step: StepRecord | None = None


@dataclass(eq=False)
class _Watcher:
    workflow_id: str
    events: asyncio.Queue[WatchEvent | Exception] = field(default_factory=asyncio.Queue)
    #: Status of every step sent so far, by number.
    step_status: dict[int, StepStatus] = field(default_factory=dict)
    #: The lowest step number that may still change (every step below it has finished).
    first_open: int = 0
    workflow_status: WorkflowStatus = WorkflowStatus.RUNNING
    step_count: int = 0
    ended: bool = False
    #: Set once its snapshot is sent: changes read before then are the snapshot's business.
    ready: bool = False
    #: A pass read the workflow before the snapshot was sent: read it again once it is.
    missed: bool = False

    def start_from(self, state: WatchedState) -> None:
        """What the snapshot showed is what this watcher has seen."""
        for step in state.steps:
            self.step_status[step.number] = step.status
        self._advance()
        self.workflow_status = state.workflow.status
        self.step_count = state.workflow.step_count
        self.ready = True

    def apply(self, state: WatchedState) -> None:
        """Queue the events that lead from what this watcher saw to ``state``."""
        if not self.ready:
            self.missed = True
            return
        if self.ended:
            return
        workflow = state.workflow
        for step in state.steps:
            if step.number < self.first_open:
                continue
            seen = self.step_status.get(step.number)
            if seen is None:
                self.events.put_nowait(WatchEvent(WatchEventKind.STEP_STARTED, workflow, step))
                seen = StepStatus.RUNNING
            if step.status != seen and step.status in _STEP_ENDS:
                self.events.put_nowait(WatchEvent(_STEP_ENDS[step.status], workflow, step))
            self.step_status[step.number] = step.status
        self._advance()
        self.workflow_status = workflow.status
        self.step_count = workflow.step_count
        if workflow.status is not WorkflowStatus.RUNNING:
            self.events.put_nowait(WatchEvent(WatchEventKind.WORKFLOW_FINISHED, workflow))
            self.ended = True

    def _advance(self) -> None:
        while self.step_status.get(self.first_open, StepStatus.RUNNING) is not StepStatus.RUNNING:
            del self.step_status[self.first_open]  # finished: never read or compared again
            self.first_open += 1


class WatchHub:
    """Every watcher of the coordinator, and the one loop that keeps them up to date."""

    def __init__(self, reader: Reader, max_watchers: int = 10_000) -> None:
        self._reader = reader
        self._max_watchers = max_watchers
        self._count = 0
        self._watchers: dict[str, set[_Watcher]] = {}
        #: Step (= task) id of every step in progress of a watched workflow, to its workflow.
        self._running_steps: dict[int, str] = {}
        #: The same, by workflow.
        self._tracked: dict[str, frozenset[int]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._closed: Exception | None = None

    @property
    def watcher_count(self) -> int:
        return self._count

    # ------------------------------------------------------------- notifications

    def changed(self, workflow_ids: Iterable[str]) -> None:
        """These workflows may have changed (committed): re-read the watched ones."""
        if not self._watchers:
            return
        marked = [workflow_id for workflow_id in workflow_ids if workflow_id in self._watchers]
        if marked:
            self._dirty.update(marked)
            self._wake.set()

    def tasks_changed(self, task_ids: Iterable[int]) -> None:
        """Results for these tasks were recorded (or their attempts taken back)."""
        if not self._running_steps:
            return
        self.changed(
            workflow_id
            for task_id in task_ids
            if (workflow_id := self._running_steps.get(task_id)) is not None
        )

    def all_changed(self) -> None:
        """Something changed workflows it did not name (an operator's bulk action)."""
        if self._watchers:
            self._dirty.update(self._watchers)
            self._wake.set()

    def close(self) -> None:
        """End every watch with UNAVAILABLE (shutdown): the clients watch again elsewhere or later."""
        self._closed = Unavailable("the coordinator is shutting down; watch the workflow again")
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.events.put_nowait(self._closed)

    # ------------------------------------------------------------------- watching

    async def watch(self, workflow_id: str) -> AsyncGenerator[WatchEvent, None]:
        """The workflow's snapshot, then its changes until it finishes (NotFound for an unknown id)."""
        if self._closed is not None:
            raise self._closed
        if self._count >= self._max_watchers:
            raise ResourceExhausted(
                f"this coordinator already serves {self._count} WatchWorkflow streams, the most it takes "
                "(--max-watchers); close the watches you no longer need (a client's wait() holds one "
                "until the workflow finishes or its timeout passes), poll GetWorkflow instead, or raise "
                "--max-watchers"
            )
        watcher = _Watcher(workflow_id)
        self._count += 1
        # Registered before the snapshot is read: a change committed during the read marks
        # it, and the next pass shows it (events are computed from the state, never lost).
        self._watchers.setdefault(workflow_id, set()).add(watcher)
        try:
            found = await self._reader.run(
                lambda connection: watching.states(connection, {workflow_id: 0}), snapshot=True
            )
            state = found.get(workflow_id)
            if state is None:
                raise NotFound(f"no workflow with id {workflow_id!r}")
            snapshot = WatchEvent(
                WatchEventKind.SNAPSHOT, dataclasses.replace(state.workflow, steps=state.steps)
            )
            watcher.start_from(state)
            yield snapshot
            if state.workflow.status is not WorkflowStatus.RUNNING:
                return
            self._track(workflow_id, self._tracked.get(workflow_id, frozenset()) | state.running_step_ids)
            if watcher.missed:
                self._dirty.add(workflow_id)
                self._wake.set()
            while True:
                event = await watcher.events.get()
                if isinstance(event, Exception):
                    raise event
                yield event
                if event.kind is WatchEventKind.WORKFLOW_FINISHED:
                    return
        finally:
            self._forget(watcher)

    def _track(self, workflow_id: str, running_step_ids: frozenset[int]) -> None:
        """Remember which steps of ``workflow_id`` are in progress, forgetting those that ended."""
        for step_id in self._tracked.get(workflow_id, frozenset()) - running_step_ids:
            self._running_steps.pop(step_id, None)
        for step_id in running_step_ids:
            self._running_steps[step_id] = workflow_id
        self._tracked[workflow_id] = running_step_ids

    def _forget(self, watcher: _Watcher) -> None:
        watchers = self._watchers.get(watcher.workflow_id)
        if watchers is None or watcher not in watchers:
            return
        self._count -= 1
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[watcher.workflow_id]
            self._dirty.discard(watcher.workflow_id)
            self._track(watcher.workflow_id, frozenset())
            self._tracked.pop(watcher.workflow_id, None)

    # ----------------------------------------------------------------------- loop

    async def pump_loop(self) -> None:
        """Re-read the workflows marked changed, for all their watchers at once; catch up now and then
        (on a clock, not when idle: a busy coordinator wakes the loop all the time)."""
        last_catch_up = time.monotonic()
        while True:
            try:
                async with asyncio.timeout(max(0.0, last_catch_up + CATCH_UP_INTERVAL - time.monotonic())):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if time.monotonic() - last_catch_up >= CATCH_UP_INTERVAL:
                last_catch_up = time.monotonic()
                await self._catch_up()
            self._wake.clear()
            await self.refresh()

    async def refresh(self) -> None:
        """One pass: re-read every marked workflow that is still watched and queue its events."""
        marked = [workflow_id for workflow_id in self._dirty if workflow_id in self._watchers]
        self._dirty.clear()
        if not marked:
            return
        from_step = {
            workflow_id: min(watcher.first_open for watcher in self._watchers[workflow_id])
            for workflow_id in marked
        }
        try:
            found = await self._reader.run(
                lambda connection: watching.states(connection, from_step), snapshot=True
            )
        except BaseException:
            self._dirty.update(marked)  # read again on the next pass (the supervisor restarts us)
            raise
        for workflow_id, state in found.items():
            watchers = self._watchers.get(workflow_id)
            if not watchers:
                continue
            for watcher in watchers:
                watcher.apply(state)
            self._track(workflow_id, state.running_step_ids)

    async def _catch_up(self) -> None:
        # A watcher still waiting for its snapshot has seen nothing yet to compare with.
        watched = {
            workflow_id: ready[0]
            for workflow_id, watchers in self._watchers.items()
            if (ready := [watcher for watcher in watchers if watcher.ready and not watcher.ended])
        }
        if not watched:
            return
        found = await self._reader.run(lambda connection: watching.versions(connection, list(watched)))
        for workflow_id, (status, step_count) in found.items():
            watcher = watched[workflow_id]
            if status != watcher.workflow_status or step_count != watcher.step_count:
                self._dirty.add(workflow_id)
