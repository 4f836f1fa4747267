"""Where workflow code runs: a thread of its own, one replay at a time, each with a deadline.

Replay runs user code. Run on the writer thread (inside its transaction), a blocking
call (``time.sleep``, I/O, a lock) or a long computation in one workflow would stall
every write of the coordinator, and ``sys.exit()`` would end the writer for good. So
the replay loop reads what is due, hands each replay to this runner, and applies the
outcomes in a short write of its own (:mod:`conveyor.coordinator.store.replays`).

A replay that does not finish within ``timeout`` fails its workflow with a message
saying why. Python cannot kill a thread, so the runner abandons the stuck thread
(it is a daemon; an asynchronous exception is raised into it, which stops pure-Python
loops at their next bytecode) and carries on with a fresh one.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from conveyor import logs, tracing

from .model import WorkflowStatus
from .replay import ReplayOutcome

log = logging.getLogger(__name__)


class ReplayTimedOut(BaseException):
    """Raised into a replay thread that overran its deadline; a ``BaseException`` so that
    ``except Exception`` in workflow code does not swallow it."""


@dataclass(frozen=True)
class ReplayCall:
    """One replay to run: the workflow it is for (for messages), the call itself, and the
    workflow's stored W3C Trace Context (the parent of the replay's span)."""

    workflow_id: str
    #: None: nothing decided (the workflow cache lost the run it was read for; read it again).
    run: Callable[[], ReplayOutcome | None]
    trace_context: str | None = None
    #: False for housekeeping on the runner's thread (closing dropped runs), which is no replay.
    traced: bool = True


class _Batch:
    """Replays handed to a worker together, and how far it got.

    The worker runs them one after another and wakes the event loop once, when all are done:
    a cross-thread round trip per replay (a future, a wake-up of the loop, a deadline) cost
    more than most replays, and left the thread idle in between. Each replay still gets its
    own deadline, counted from when it started (``current``).
    """

    def __init__(self, calls: Sequence[ReplayCall], loop: asyncio.AbstractEventLoop) -> None:
        self.calls = calls
        self.outcomes: list[ReplayOutcome | None] = []
        #: (index of the replay running, when it started: time.monotonic()), set by the worker.
        self.current: tuple[int, float] | None = None
        #: Set when the runner gave up on the replay running: the worker starts no other one.
        self.stopped = False
        #: Held briefly by both sides, so the runner decides on a ``current`` the worker cannot
        #: change meanwhile (and a replay never runs on two threads at once).
        self.lock = threading.Lock()
        self.done: asyncio.Future[None] = loop.create_future()
        self._loop = loop

    def finished(self) -> None:
        self._loop.call_soon_threadsafe(_resolve, self.done)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class _Worker:
    """One runner thread and its job queue."""

    def __init__(self, number: int) -> None:
        self.jobs: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self.abandoned = False
        self.thread = threading.Thread(target=self._run, name=f"conveyor-replay-{number}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.abandoned:
                batch = self.jobs.get()
                if batch is None:
                    return
                for index, call in enumerate(batch.calls):
                    with batch.lock:
                        if batch.stopped:
                            return  # a replay overran: the runner failed it and went on without us
                        batch.current = (index, time.monotonic())
                    try:
                        outcome = _traced(call)
                    except BaseException as error:  # nothing workflow code does may end this thread
                        outcome = _failed(f"replay failed unexpectedly: {error!r}")
                    with batch.lock:
                        if batch.stopped:
                            return
                        batch.outcomes.append(outcome)
                batch.finished()
        except ReplayTimedOut:
            pass  # abandoned; the timeout arrived between replays


class ReplayRunner:
    """Runs replays off the event loop and off the writer, each within ``timeout`` seconds."""

    def __init__(self, timeout: float, on_abandon: Callable[[], None] | None = None) -> None:
        if not timeout > 0:
            raise ValueError(f"replay timeout must be positive, not {timeout}")
        self._timeout = timeout
        #: Called when a stuck thread is abandoned (the workflow cache drops what it may be inside).
        self._on_abandon = on_abandon
        self._started = 0
        self._worker: _Worker | None = None
        self._stopped = False
        #: Replays that overran their deadline, for metrics and tests.
        self.timeouts = 0

    def healthy(self) -> bool:
        """False if the runner thread died and no replay has replaced it yet (it never should)."""
        return self._stopped or self._worker is None or self._worker.thread.is_alive()

    def stop(self) -> None:
        self._stopped = True
        if self._worker is not None:
            self._worker.jobs.put(None)
            self._worker = None

    async def run(self, calls: Sequence[ReplayCall]) -> list[ReplayOutcome | None]:
        """Run ``calls`` one after another; a replay that overruns fails alone."""
        outcomes: list[ReplayOutcome | None] = []
        pending = list(calls)
        while pending:
            overran = await self._run_batch(pending, outcomes)
            if overran is None:
                break
            outcomes.append(self._overran(pending[overran]))
            pending = pending[overran + 1 :]  # the rest on a fresh thread
        return outcomes

    async def _run_batch(self, calls: list[ReplayCall], outcomes: list[ReplayOutcome | None]) -> int | None:
        """Run ``calls`` on the worker, adding their outcomes to ``outcomes``; the index of the
        replay that overran its deadline (its thread abandoned, the ones after it not run), or None."""
        worker = self._current_worker()
        batch = _Batch(calls, asyncio.get_running_loop())
        worker.jobs.put(batch)
        while not batch.done.done():
            current = batch.current
            deadline = (time.monotonic() if current is None else current[1]) + self._timeout
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(batch.done)
            except TimeoutError:
                with batch.lock:
                    if batch.current != current or (current is not None and len(batch.outcomes) > current[0]):
                        continue  # that replay finished in time (or the first began): a deadline of its own
                    batch.stopped = True  # the replay overran (or none began: the thread is stuck or gone)
                    done = list(batch.outcomes)
                self._abandon(worker)
                outcomes.extend(done)
                return len(done)
        outcomes.extend(batch.outcomes)
        return None

    def _overran(self, call: ReplayCall) -> ReplayOutcome:
        self.timeouts += 1
        message = (
            f"workflow code did not finish replaying within {self._timeout:g}s (--replay-timeout): "
            "it blocks (time.sleep, file or network I/O, a lock) or computes for too long. Workflow "
            "code must only await ctx steps; do slow or blocking work in a ctx.task() handler"
        )
        log.error(
            "workflow %s: %s", call.workflow_id, message, extra=logs.fields(workflow_id=call.workflow_id)
        )
        return _failed(message)

    def _current_worker(self) -> _Worker:
        if self._worker is None or not self._worker.thread.is_alive():
            self._started += 1
            self._worker = _Worker(self._started)
        return self._worker

    def _abandon(self, worker: _Worker) -> None:
        if self._on_abandon is not None:
            self._on_abandon()
        worker.abandoned = True
        worker.jobs.put(None)
        if self._worker is worker:
            self._worker = None
        ident = worker.thread.ident
        if ident is not None and worker.thread.is_alive():
            # Interrupts a pure-Python loop at its next bytecode; a thread blocked in C (sleep,
            # I/O) notices when that call returns. Either way the thread stops taking jobs.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(ReplayTimedOut)
            )


def _traced(call: ReplayCall) -> ReplayOutcome | None:
    """Run ``call`` in a ``conveyor.replay`` span under its workflow's trace (a no-op untraced)."""
    if not call.traced:
        return call.run()
    with tracing.span(
        "conveyor.replay",
        parent=tracing.decode(call.trace_context),
        attributes={"conveyor.workflow.id": call.workflow_id},
    ) as span:
        outcome = call.run()
        if outcome is None:
            return None
        span.set_attribute("conveyor.workflow.status", str(outcome.status))
        span.set_attribute("conveyor.replay.new_steps", len(outcome.new_steps))
        if outcome.status is WorkflowStatus.FAILED:
            span.fail(outcome.error or "the workflow failed")
        return outcome


def _failed(error: str) -> ReplayOutcome:
    return ReplayOutcome(WorkflowStatus.FAILED, error=error)
