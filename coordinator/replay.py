"""Deterministic replay of a workflow function over its journal, one activation at a time.

A workflow runs in *activations*. Activation 0 runs the ``async def`` from the top
until it is quiescent (nothing ready to run): it has returned, raised, or waits on
steps. Each later activation delivers a set of step outcomes (results, failures,
fired timers) to the waiting code, in journal order, and runs it until quiescent
again. A workflow advances as soon as any step it started finishes: the activation
delivers whatever finished since the previous one, whether or not other steps still
run. The journal records, per step, the activation that delivered its outcome
(``delivered_in``), so a replay from scratch delivers every outcome at the point the
code first saw it and the code takes the same positions, whatever it composes
(``gather``, ``asyncio.wait(..., FIRST_COMPLETED)``, ``as_completed``, ``wait_for``,
``asyncio.timeout``, tasks).

:class:`WorkflowRun` is one execution of the code. :meth:`WorkflowRun.resume` replays
the recorded activations (activation 0, then each recorded delivery), comparing each
step the code asks for with the journal (kind, name, canonical arguments), and then
runs the new activation; :meth:`WorkflowRun.advance` runs a new activation on a run
that is already caught up (the coordinator's workflow cache keeps runs between
activations). A from-scratch replay is ``resume``, which ends in ``advance``: both
reach the same decision by construction.

Only ``ctx.now()`` / ``ctx.random()`` resolve on the spot. asyncio timers are
durable: ``loop.call_later`` / ``call_at`` take a sleep step (``asyncio.sleep``,
``wait_for``, ``asyncio.wait(timeout=...)``, ``as_completed(timeout=...)``,
``asyncio.timeout``), whose delivery runs the callback; cancelling the handle
cancels the step. ``loop.time()`` is a virtual clock: seconds since the workflow
started, as of the activation (the latest completion time among the outcomes it
delivered), so a replay reads the same values. A step whose future the code cancels
(a lost race, a timeout) is *withdrawn*: the store cancels it and tells its
executor to stop; ``asyncio.shield`` (or simply not cancelling) keeps it running and
its outcome is delivered to nobody.

Replay is pure: it reads nothing and writes nothing. It runs workflow code, so the
coordinator runs it on the replay runner's thread (:mod:`conveyor.coordinator.replay_runner`),
and the store applies its outcome in a short write that first re-checks the workflow.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
import random
import traceback
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, TypeVarTuple, Unpack

from conveyor.errors import ChildWorkflowFailed, NonDeterminismError, SignalTimeout, StepFailed, WorkflowError
from conveyor.workflow import (
    DEFAULT_LLM_RETRY,
    DEFAULT_TASK_RETRY,
    MAX_DURATION_SECONDS,
    LlmResponse,
    RetryPolicy,
    WorkflowDefinition,
    WorkflowRegistry,
)

from . import validation
from .args_encoding import ArgsEncoder, EncodedArgs
from .clock import seconds_to_us, to_datetime
from .model import (
    LLM_TASK_KIND,
    StepKind,
    StepStatus,
    WorkflowStatus,
    canonical_digest,
    canonical_json,
    child_workflow_id,
)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: A journal longer than this is almost certainly a runaway loop in workflow code.
MAX_STEPS_PER_WORKFLOW = 10_000
#: Bounds the ready callbacks one replay may run, so an ``async`` busy loop in
#: workflow code fails its workflow instead of stalling the coordinator.
MAX_CALLBACKS_PER_REPLAY = 1_000_000
#: Recorded errors keep the end of the traceback, where the cause usually is.
MAX_ERROR_CHARS = 4_000
#: The name of the sleep step an asyncio timer takes (``asyncio.sleep``, ``wait_for``...).
TIMER_STEP_NAME = "asyncio.timer"
#: ``delivered_in`` of a step whose outcome is never delivered: ``ctx.now()`` / ``ctx.random()``
#: (resolved when taken) and steps the workflow code withdrew (cancelled) itself. Activation 0
#: is the first run from the top and delivers nothing, so 0 is never a real delivery.
SETTLED = 0
#: Steps that resolve on the spot: recorded values and ``ctx.patched`` markers.
INSTANT_KINDS = frozenset({StepKind.NOW, StepKind.RANDOM, StepKind.PATCH})


@dataclass(frozen=True)
class JournalEntry:
    """A step as the journal records it."""

    number: int
    kind: StepKind
    name: str
    args_json: str
    status: StepStatus
    result_json: str | None = None
    error: str | None = None
    #: The activation that delivered its outcome; None: not yet; :data:`SETTLED`: never will.
    delivered_in: int | None = None
    #: When it finished (microseconds since the epoch): sets the virtual clock of its activation.
    completed_at: int | None = None
    #: :func:`canonical_digest` of the canonical arguments when the journal stores them compacted.
    args_digest: str | None = None

    def was_called_with(self, args_json: str, encoded: EncodedArgs | None = None) -> bool:
        """Whether this step was taken with the canonical arguments ``args_json``: the same text,
        or for compacted arguments the same SHA-256, so replay never reassembles past requests.
        ``encoded``: ``args_json`` as the run's encoder made it, whose digest may be known."""
        if self.args_digest is not None:
            digest = encoded.digest if encoded is not None else canonical_digest(args_json)
            return digest == self.args_digest
        return self.args_json == args_json

    @property
    def awaiting_delivery(self) -> bool:
        """Finished, but the workflow code has not been handed its outcome yet."""
        return (
            self.status is not StepStatus.RUNNING
            and self.delivered_in is None
            and self.kind not in INSTANT_KINDS
        )


@dataclass(frozen=True)
class NewStep:
    """A step the workflow asked for that the journal does not hold yet."""

    number: int
    kind: StepKind
    name: str
    args_json: str
    #: Executor task kind (``"llm"`` or a handler kind) for LLM and task steps.
    task_kind: str | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    #: When a sleep step's timer fires.
    wake_at_us: int | None = None
    #: ``now`` / ``random`` steps are complete the moment they are taken.
    result_json: str | None = None
    #: A child step's workflow: its name and canonical arguments (its id is derived from the step).
    child_workflow: str | None = None
    child_args_json: str | None = None
    #: ``args_json`` with its compacted form and digest, as replay encoded it (LLM and task
    #: steps), so the writer need not parse and hash the whole text again.
    encoded: EncodedArgs | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ReplayOutcome:
    """What one replay decided. ``status`` RUNNING means "waiting for steps"."""

    status: WorkflowStatus
    new_steps: tuple[NewStep, ...] = ()
    result_json: str | None = None
    error: str | None = None
    #: Outcomes this replay delivered, as (step number, activation), to record as ``delivered_in``.
    delivered: tuple[tuple[int, int], ...] = ()
    #: Running steps the workflow code withdrew (cancelled its wait on): the store cancels them.
    withdrawn: tuple[int, ...] = ()
    #: How many activations the workflow has run after this replay (None: not known, a failure
    #: before any code ran).
    activations: int | None = None
    #: Set when the workflow failed because code and journal disagree: the first step they differ at.
    nondeterministic_step: int | None = None


class _ReplaySealed(BaseException):
    """Raised into workflow code that calls ``ctx`` while a finished replay is torn down.

    A ``BaseException`` so that ``except Exception`` in workflow code does not swallow it.
    """


class _DurableTimer(asyncio.TimerHandle):
    """The handle of an asyncio timer: cancelling it withdraws its sleep step."""

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: Sequence[Any],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context | None,
        withdraw: Callable[[], None],
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self._withdraw = withdraw

    def cancel(self) -> None:
        if not self.cancelled():
            self._withdraw()
        super().cancel()


class _ReplayLoop(asyncio.AbstractEventLoop):
    """An event loop that runs ready callbacks and nothing else.

    Timers are durable sleep steps and the clock is virtual (both through the
    context that owns the loop, see the module doc); I/O would make replay depend on
    the world rather than the journal. Only the methods asyncio's futures, tasks,
    timeouts and combinators use are implemented; anything else raises
    ``NotImplementedError`` from the base class.
    """

    def __init__(self) -> None:
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._running = False
        self._closed = False
        self.owner: _ReplayContext | None = None

    def run_until_quiescent(self, max_callbacks: int) -> int:
        """Run ready callbacks until none is left; returns how many ran."""
        previous = asyncio._get_running_loop()
        asyncio._set_running_loop(self)
        self._running = True
        try:
            for ran in range(max_callbacks):
                if not self._ready:
                    return ran
                self._ready.popleft()._run()
            raise WorkflowError(
                f"workflow code ran {max_callbacks} event-loop callbacks without finishing or "
                "waiting on a step; it probably loops forever"
            )
        finally:
            self._running = False
            asyncio._set_running_loop(previous)

    def make_ready(self, handle: asyncio.Handle) -> None:
        self._ready.append(handle)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass  # a durable timer withdraws its step itself (see _DurableTimer.cancel)

    def call_soon(
        self,
        callback: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(
        self,
        delay: float,
        callback: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        assert self.owner is not None
        return self.owner.timer(delay, callback, args, context)

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_later(when - self.time(), callback, *args, context=context)

    def time(self) -> float:
        assert self.owner is not None
        return self.owner.clock_seconds()

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(self, coro: Any, *, name: str | None = None, context: Any = None) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._ready.clear()
        self._closed = True

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # "Task exception was never retrieved" and the like: the outcome already
        # records what matters, and logging from replay would repeat on every replay.
        pass

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        pass


_Delivery = Callable[[JournalEntry], None]


class _ReplayContext:
    """The ``WorkflowContext`` handed to workflow code during replay."""

    def __init__(
        self,
        loop: _ReplayLoop,
        workflow_id: str,
        workflow_name: str,
        rng: random.Random,
        started_at_us: int,
        workflows: WorkflowRegistry | None = None,
    ) -> None:
        self._loop = loop
        #: The registered workflows, to check a child's name and arguments where it is started.
        self._workflows = workflows
        self._workflow_id = workflow_id
        self._workflow_name = workflow_name
        self._rng = rng
        self._started_at_us = started_at_us
        self._journal: Sequence[JournalEntry] = ()
        self._cursor = 0
        #: The real time of this replay: ``ctx.now()`` and the wake time of new sleep steps.
        self.now_us = 0
        #: The virtual clock (``loop.time()``), in microseconds since the workflow started.
        self._clock_us = 0
        #: Steps asked for but not delivered nor withdrawn: how to deliver each one's outcome.
        self._waiting: dict[int, _Delivery] = {}
        self.new_steps: list[NewStep] = []
        self.withdrawn: list[int] = []
        #: The recorded activation being replayed (every step asked for must be journaled), or None.
        self.recording: int | None = None
        #: An error that fails the workflow whatever the workflow code does with it.
        self.fatal_error: WorkflowError | None = None
        self.sealed = False
        #: Encodes LLM and task arguments reusing the previous step's (a growing conversation).
        self.arguments = ArgsEncoder()

    @property
    def workflow_id(self) -> str:
        return self._workflow_id

    @property
    def workflow_name(self) -> str:
        return self._workflow_name

    @property
    def cursor(self) -> int:
        """The journal positions taken so far."""
        return self._cursor

    @property
    def journal(self) -> Sequence[JournalEntry]:
        return self._journal

    @journal.setter
    def journal(self, journal: Sequence[JournalEntry]) -> None:
        self._journal = journal

    @property
    def waiting(self) -> bool:
        """Some step the code asked for has an outcome still to come."""
        return bool(self._waiting)

    def is_waiting_on(self, number: int) -> bool:
        return number in self._waiting

    def clock_seconds(self) -> float:
        return self._clock_us / 1_000_000

    def fail(self, error: WorkflowError) -> WorkflowError:
        """Record ``error`` as fatal (the first one wins) and return it, to raise into the code."""
        self.fatal_error = self.fatal_error or error
        return error

    # --- the WorkflowContext API ----------------------------------------------------------

    async def llm(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int,
        name: str = "llm",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        **create_args: Any,
    ) -> LlmResponse:
        _step_timeout(timeout)
        request = {"model": model, "messages": messages, "max_tokens": max_tokens, **create_args}
        encoded = self._encoded_arguments("ctx.llm()", (StepKind.LLM, name), request)
        args_json = encoded.text
        return await self._take_step(
            StepKind.LLM,
            name,
            args_json,
            lambda number: NewStep(
                number,
                StepKind.LLM,
                name,
                args_json,
                LLM_TASK_KIND,
                retry or DEFAULT_LLM_RETRY,
                timeout,
                encoded=encoded,
            ),
            lambda result: LlmResponse(json.loads(result)),
            encoded,
        )

    async def task(
        self,
        kind: str,
        payload: Any = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Any:
        if not kind or kind == LLM_TASK_KIND:
            raise ValueError(f"ctx.task() needs a handler kind other than {LLM_TASK_KIND!r}; got {kind!r}")
        validation.step_name(kind, "ctx.task() kind")
        _step_timeout(timeout)
        step_name = name or kind
        encoded = self._encoded_arguments(
            "ctx.task()", (StepKind.TASK, step_name), {"kind": kind, "payload": payload}
        )
        args_json = encoded.text
        return await self._take_step(
            StepKind.TASK,
            step_name,
            args_json,
            lambda number: NewStep(
                number,
                StepKind.TASK,
                step_name,
                args_json,
                kind,
                retry or DEFAULT_TASK_RETRY,
                timeout,
                encoded=encoded,
            ),
            json.loads,
            encoded,
        )

    async def sleep(self, seconds: float, *, name: str = "sleep") -> None:
        _duration(seconds, "ctx.sleep() duration", allow_zero=True)
        args_json = _json_arguments("ctx.sleep()", {"seconds": seconds})
        await self._take_step(
            StepKind.SLEEP,
            name,
            args_json,
            lambda number: NewStep(
                number, StepKind.SLEEP, name, args_json, wake_at_us=self.now_us + seconds_to_us(seconds)
            ),
            lambda _result: None,
        )

    async def wait_for_signal(self, name: str, *, timeout: float | None = None) -> Any:
        validation.step_name(name, "signal name")
        if timeout is not None:
            _duration(timeout, "signal timeout", allow_zero=False)
        args_json = _json_arguments("ctx.wait_for_signal()", {"timeout": timeout})
        return await self._take_step(
            StepKind.SIGNAL,
            name,
            args_json,
            lambda number: NewStep(
                number,
                StepKind.SIGNAL,
                name,
                args_json,
                wake_at_us=None if timeout is None else self.now_us + seconds_to_us(timeout),
            ),
            json.loads,
        )

    async def child(self, workflow: str, args: Any = None, *, name: str | None = None) -> Any:
        return await self.start_child(workflow, args, name=name)

    def start_child(self, workflow: str, args: Any = None, *, name: str | None = None) -> _ChildHandle:
        step_name = name or workflow
        child_args = [] if args is None else args
        if not isinstance(child_args, list | dict):
            raise TypeError(
                f"ctx.start_child() arguments must be a dict (keyword) or list (positional), not "
                f"{type(child_args).__name__}"
            )
        if self._workflows is not None:
            definition = self._workflows.get(workflow)
            if definition is None:
                known = ", ".join(self._workflows.names()) or "none"
                raise ValueError(f"ctx.start_child(): no workflow named {workflow!r} is registered ({known})")
            definition.check_arguments(child_args)  # TypeError in the parent, before anything starts
        child_args_json = _json_arguments("ctx.start_child()", child_args)
        args_json = _json_arguments("ctx.start_child()", {"workflow": workflow, "args": child_args})
        future = self._take_step(
            StepKind.CHILD,
            step_name,
            args_json,
            lambda number: NewStep(
                number,
                StepKind.CHILD,
                step_name,
                args_json,
                child_workflow=workflow,
                child_args_json=child_args_json,
            ),
            json.loads,
        )
        return _ChildHandle(child_workflow_id(self._workflow_id, self._cursor - 1), future)

    def patched(self, change_id: str) -> bool:
        if self.sealed:
            raise _ReplaySealed()
        validation.step_name(change_id, "patch id")
        if self._cursor < len(self._journal):
            # Replaying: the code that recorded this journal took the new path here only if it
            # journaled the marker here. Otherwise it is older code: no position is taken.
            entry = self._journal[self._cursor]
            if not (entry.kind is StepKind.PATCH and entry.name == change_id):
                return False
        elif self.recording is not None:
            return False  # an activation recorded by code that did not make this call here
        future = self._take_step(
            StepKind.PATCH,
            change_id,
            "null",
            lambda number: NewStep(number, StepKind.PATCH, change_id, "null", result_json="true"),
            lambda _result: True,
        )
        return future.result()

    def now(self) -> datetime:
        future = self._take_step(
            StepKind.NOW,
            "now",
            "null",
            lambda number: NewStep(number, StepKind.NOW, "now", "null", result_json=str(self.now_us)),
            lambda result: to_datetime(int(result)),
        )
        return future.result()

    def random(self) -> float:
        future = self._take_step(
            StepKind.RANDOM,
            "random",
            "null",
            lambda number: NewStep(
                number, StepKind.RANDOM, "random", "null", result_json=repr(self._rng.random())
            ),
            float,
        )
        return future.result()

    # --- the event loop's timers ------------------------------------------------------------

    def timer(
        self,
        delay: float,
        callback: Callable[..., object],
        args: Sequence[Any],
        context: contextvars.Context | None,
    ) -> asyncio.TimerHandle:
        """``loop.call_later``: a durable sleep step whose delivery runs ``callback``."""
        # Microseconds, as the store keeps time; also hides the float noise of when - loop.time().
        rounded = round(max(float(delay), 0.0), 6)
        _duration(rounded, "asyncio timer delay", allow_zero=True)
        seconds: float = int(rounded) if rounded.is_integer() else rounded  # 30, not 30.0
        args_json = canonical_json({"seconds": seconds})
        number, _entry = self._take(
            StepKind.SLEEP,
            TIMER_STEP_NAME,
            args_json,
            lambda number: NewStep(
                number,
                StepKind.SLEEP,
                TIMER_STEP_NAME,
                args_json,
                wake_at_us=self.now_us + seconds_to_us(seconds),
            ),
        )
        handle = _DurableTimer(
            self.clock_seconds() + seconds,
            callback,
            args,
            self._loop,
            context,
            lambda: self.withdraw(number),
        )
        self._waiting[number] = lambda entry: _fire(self._loop, handle, entry)
        return handle

    # --- steps ---------------------------------------------------------------------------------

    def _encoded_arguments(self, call: str, key: tuple[StepKind, str], value: Any) -> EncodedArgs:
        try:
            return self.arguments.encode(key, value)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{call} arguments must be JSON values: {error}") from error

    def _take(
        self,
        kind: StepKind,
        name: str,
        args_json: str,
        make_new: Callable[[int], NewStep],
        encoded: EncodedArgs | None = None,
    ) -> tuple[int, JournalEntry | NewStep]:
        """Take the next journal position: its recorded entry (checked against the call) or a new step."""
        if self.sealed:
            raise _ReplaySealed()
        validation.step_name(name, "step name")
        number = self._cursor
        self._cursor += 1
        if number >= MAX_STEPS_PER_WORKFLOW:
            raise self.fail(
                WorkflowError(
                    f"workflow asked for more than {MAX_STEPS_PER_WORKFLOW} steps; split the work into "
                    "several workflows"
                )
            )
        if number < len(self._journal):
            entry = self._journal[number]
            if (entry.kind, entry.name) != (kind, name) or not entry.was_called_with(args_json, encoded):
                raise self.fail(
                    NonDeterminismError(_mismatch_message(entry, kind, name, args_json), entry.number)
                )
            return number, entry
        if self.recording is not None:
            raise self.fail(
                NonDeterminismError(
                    f"non-determinism at step {number}: the workflow asked for {kind.value} step {name!r} "
                    f"in activation {self.recording}, which the journal records as having asked for no "
                    "step there. Workflow code must make the same calls in the same order on every "
                    "replay; start a new workflow for changed code",
                    number,
                )
            )
        step = make_new(number)
        self.new_steps.append(step)
        return number, step

    def _take_step(
        self,
        kind: StepKind,
        name: str,
        args_json: str,
        make_new: Callable[[int], NewStep],
        decode: Callable[[str], T],
        encoded: EncodedArgs | None = None,
    ) -> asyncio.Future[T]:
        number, taken = self._take(kind, name, args_json, make_new, encoded)
        future: asyncio.Future[T] = self._loop.create_future()
        if kind in INSTANT_KINDS:
            # Taken and resolved on the spot the first time: the same value now.
            future.set_result(decode(taken.result_json or "null"))
            return future
        self._waiting[number] = lambda entry: _settle(future, entry, decode, self._workflow_id)
        future.add_done_callback(lambda done: self.withdraw(number) if done.cancelled() else None)
        return future

    def withdraw(self, number: int) -> None:
        """The code cancelled its wait on step ``number`` before its outcome was delivered."""
        if not self.sealed and self._waiting.pop(number, None) is not None:
            self.withdrawn.append(number)

    def deliver(self, entry: JournalEntry, activation: int) -> None:
        """Hand the code the outcome of ``entry`` (its callbacks run when the loop next runs)."""
        delivery = self._waiting.pop(entry.number, None)
        if delivery is not None:
            delivery(entry)
        elif entry.number >= self._cursor:
            raise self.fail(
                NonDeterminismError(
                    f"non-determinism at step {entry.number}: the journal delivers the outcome of "
                    f"{entry.kind.value} step {entry.name!r} in activation {activation}, but the workflow "
                    "had not asked for it by then. Workflow code must make the same calls in the same "
                    "order on every replay; start a new workflow for changed code",
                    entry.number,
                )
            )
        # Otherwise the code withdrew the step: its outcome goes to nobody.

    def advance_clock(self, entries: Sequence[JournalEntry]) -> None:
        """The virtual clock of an activation: the latest completion among the outcomes it delivers."""
        times = [entry.completed_at for entry in entries if entry.completed_at is not None]
        if times:
            self._clock_us = max(self._clock_us, max(times) - self._started_at_us)


def _settle(
    future: asyncio.Future[T], entry: JournalEntry, decode: Callable[[str], T], workflow_id: str
) -> None:
    if future.done():
        return
    if entry.status is not StepStatus.COMPLETED:
        future.set_exception(_failure(entry, workflow_id))
        return
    try:
        future.set_result(decode(entry.result_json or "null"))
    except Exception as error:  # a recorded result this code cannot read fails where it is awaited
        future.set_exception(error)


def _failure(entry: JournalEntry, workflow_id: str) -> WorkflowError:
    """The exception a failed or cancelled step raises where the workflow awaits it."""
    error = entry.error or entry.status.value
    if entry.kind is StepKind.SIGNAL and entry.status is StepStatus.FAILED:
        return SignalTimeout(entry.number, entry.name, error)
    if entry.kind is StepKind.CHILD:
        return ChildWorkflowFailed(
            entry.number, entry.name, error, child_workflow_id(workflow_id, entry.number)
        )
    return StepFailed(entry.number, entry.name, error)


class _ChildHandle:
    """What ``ctx.start_child`` returns: the child's id now, its result when awaited."""

    def __init__(self, workflow_id: str, future: asyncio.Future[Any]) -> None:
        self.workflow_id = workflow_id
        self._future = future

    def __await__(self) -> Generator[Any, None, Any]:
        return self._future.__await__()


def _fire(loop: _ReplayLoop, handle: asyncio.TimerHandle, entry: JournalEntry) -> None:
    if entry.status is StepStatus.COMPLETED and not handle.cancelled():
        loop.make_ready(handle)


class WorkflowRun:
    """One execution of a workflow's code, advanced one activation at a time (see the module doc).

    Not thread-safe: every call, and :meth:`close`, must come from the same thread.
    """

    def __init__(
        self,
        definition: WorkflowDefinition,
        workflow_id: str,
        args: list[Any] | dict[str, Any],
        *,
        started_at_us: int = 0,
        rng: random.Random | None = None,
        workflows: WorkflowRegistry | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self._definition = definition
        self._args = args
        # typeshed marks every AbstractEventLoop method abstract; at run time they merely raise
        # NotImplementedError, which is what replay wants for everything it does not support.
        self._loop = _ReplayLoop()  # type: ignore[abstract]
        self._ctx = _ReplayContext(
            self._loop, workflow_id, definition.name, rng or random.Random(), started_at_us, workflows
        )
        self._loop.owner = self._ctx
        self._main: asyncio.Task[Any] | None = None
        self._budget = MAX_CALLBACKS_PER_REPLAY
        self._bad_arguments: str | None = None
        #: Legacy journals: the deliveries their waves imply, for the next outcome to record.
        self._legacy_delivered: list[tuple[int, int]] = []
        #: Activations run so far.
        self.activations = 0
        #: An estimate of the JSON the code was handed and asked for (the workflow cache's bound).
        self.held_bytes = 0
        #: The last outcome finished the workflow (or failed it): there is nothing to advance.
        self.finished = False
        self.closed = False

    @property
    def step_count(self) -> int:
        """The steps the code has taken so far (the journal's length once the outcome is applied)."""
        return self._ctx.cursor

    @property
    def memo_bytes(self) -> int:
        """An estimate of the memory its argument encoder's memo holds (the workflow cache's bound)."""
        return self._ctx.arguments.size

    def resume(self, journal: Sequence[JournalEntry], activations: int | None, now_us: int) -> ReplayOutcome:
        """From scratch: replay the ``activations`` recorded in ``journal``, then run the new one.

        ``activations`` None is a journal written before activations were recorded: its
        steps were delivered in waves (every step the code started finished before the
        next activation), which :meth:`_catch_up_legacy` reconstructs and the outcome records.
        """
        self._ctx.now_us = now_us
        self._ctx.journal = journal
        if activations is None:
            self._catch_up_legacy(journal)
        elif activations > 0:
            self._catch_up(journal, activations)
        # Steps withdrawn in recorded activations were cancelled when those were applied.
        self._ctx.withdrawn = []
        legacy = {number for number, _ in self._legacy_delivered}
        return self.advance([e for e in journal if e.awaiting_delivery and e.number not in legacy], now_us)

    def advance(self, undelivered: Sequence[JournalEntry], now_us: int) -> ReplayOutcome:
        """Run the next activation: deliver ``undelivered`` (finished steps not yet delivered, in
        journal order) and run until quiescent; say what the workflow does next.

        The first call on a run that has not started runs activation 0 instead.
        """
        if self.finished or self.closed:
            raise RuntimeError(f"workflow {self.workflow_id}: a finished run cannot advance")
        ctx = self._ctx
        ctx.now_us = now_us
        ctx.recording = None
        self._budget = MAX_CALLBACKS_PER_REPLAY
        delivered, self._legacy_delivered = self._legacy_delivered, []
        if not self._stopped():
            if self._main is None:
                self._start()
                self.activations = 1
            elif undelivered:
                activation = self.activations
                self._deliver(sorted(undelivered, key=lambda entry: entry.number), activation)
                delivered += [(entry.number, activation) for entry in undelivered]
                self.activations += 1
        outcome = self._decide(tuple(delivered))
        ctx.new_steps, ctx.withdrawn = [], []
        if ctx.cursor >= len(ctx.journal):
            ctx.journal = ()  # every position is taken: a kept run need not hold the journal
        self.finished = outcome.status is not WorkflowStatus.RUNNING
        return outcome

    def close(self) -> None:
        """Cancel what the workflow left suspended, so its ``finally`` blocks run now, not at GC."""
        if self.closed:
            return
        self.closed = True
        _tear_down(self._loop, self._ctx)

    # --- activations ---------------------------------------------------------------------

    def _start(self) -> None:
        """Activation 0: call the workflow function and run it until quiescent."""
        try:
            coroutine = (
                self._definition.function(self._ctx, **self._args)
                if isinstance(self._args, dict)
                else self._definition.function(self._ctx, *self._args)
            )
        except TypeError as error:
            self._bad_arguments = (
                f"arguments do not match workflow {self._definition.name!r}{self._definition.signature}: "
                f"{error}"
            )
            return
        self._main = self._loop.create_task(coroutine)
        self._run_until_quiescent()

    def _deliver(self, entries: Sequence[JournalEntry], activation: int) -> None:
        self._ctx.advance_clock(entries)
        try:
            for entry in entries:
                self._ctx.deliver(entry, activation)
        except NonDeterminismError:
            return  # recorded as fatal
        self._run_until_quiescent()

    def _run_until_quiescent(self) -> None:
        try:
            self._budget -= self._loop.run_until_quiescent(self._budget)
        except WorkflowError as error:
            self._ctx.fail(error)
        except BaseException as error:  # sys.exit(), KeyboardInterrupt: fail the workflow alone
            self._ctx.fail(WorkflowError(_escaped(error)))

    def _stopped(self) -> bool:
        return (
            self._bad_arguments is not None
            or self._ctx.fatal_error is not None
            or (self._main is not None and self._main.done())
        )

    def _catch_up(self, journal: Sequence[JournalEntry], activations: int) -> None:
        """Replay activations 0 .. ``activations - 1`` as the journal records them."""
        ctx = self._ctx
        by_activation: dict[int, list[JournalEntry]] = collections.defaultdict(list)
        for entry in journal:
            if entry.delivered_in is not None and entry.delivered_in != SETTLED:
                by_activation[entry.delivered_in].append(entry)
        ctx.recording = 0
        self._start()
        for activation in range(1, activations):
            if self._stopped():
                break
            ctx.recording = activation
            self._deliver(by_activation.get(activation, []), activation)
        ctx.recording = None
        self.activations = activations
        if self._stopped():
            return
        assert self._main is not None
        if self._main.done():
            ctx.fail(
                NonDeterminismError(
                    f"non-determinism: the workflow finished in activation {activations - 1}, where the "
                    "journal records it waiting on steps. Workflow code must make the same calls in the "
                    "same order on every replay; start a new workflow for changed code"
                )
            )
        elif ctx.cursor < len(journal):
            ctx.fail(
                NonDeterminismError(
                    _unconsumed_message(journal, ctx.cursor, finished=False), journal[ctx.cursor].number
                )
            )
        else:
            for entry in journal:
                if (
                    entry.delivered_in == SETTLED
                    and entry.kind not in INSTANT_KINDS
                    and ctx.is_waiting_on(entry.number)
                ):
                    ctx.fail(
                        NonDeterminismError(
                            f"non-determinism at step {entry.number}: the workflow cancelled "
                            f"{entry.kind.value} step {entry.name!r} the first time, but not on replay. "
                            "Workflow code must make the same calls in the same order on every replay",
                            entry.number,
                        )
                    )
                    return

    def _catch_up_legacy(self, journal: Sequence[JournalEntry]) -> None:
        """A journal from before activations: each wave of steps was delivered once all had finished."""
        ctx = self._ctx
        self._start()
        wave = 0
        while not self._stopped() and not ctx.new_steps:
            taken = [entry for entry in journal[: ctx.cursor] if ctx.is_waiting_on(entry.number)]
            if not taken or any(entry.status is StepStatus.RUNNING for entry in taken):
                break
            wave += 1
            self._deliver(taken, wave)
            self._legacy_delivered += [(entry.number, wave) for entry in taken]
        self.activations = wave + 1

    def _decide(self, delivered: tuple[tuple[int, int], ...]) -> ReplayOutcome:
        ctx = self._ctx
        if self._bad_arguments is not None or self._main is None:
            return _failed(self._bad_arguments or "the workflow did not start")
        activations = self.activations
        if ctx.fatal_error is not None:
            step = ctx.fatal_error.step_number if isinstance(ctx.fatal_error, NonDeterminismError) else None
            return _failed(
                str(ctx.fatal_error), delivered=delivered, activations=activations, nondeterministic_step=step
            )
        if ctx.cursor < len(ctx.journal):
            message = _unconsumed_message(ctx.journal, ctx.cursor, finished=self._main.done())
            return _failed(
                message,
                delivered=delivered,
                activations=activations,
                nondeterministic_step=ctx.journal[ctx.cursor].number,
            )
        main = self._main
        if main.done():
            # Journal every step its last activation took: the ctx.now()/ctx.random() values may
            # be in its result or error, and the steps it started without waiting for them (a
            # race's ignored loser) keep the journal's numbering whole; the store cancels those
            # in the same write, so no executor ever sees them.
            taken = tuple(ctx.new_steps)
            if main.cancelled():
                return _failed("workflow code cancelled its own task", taken, delivered, activations)
            error = main.exception()
            if error is not None:
                return _failed(_describe_exception(error), taken, delivered, activations)
            try:
                result_json = canonical_json(main.result())
            except RecursionError:
                return _failed(
                    "workflow returned a value nested too deeply to encode as JSON",
                    taken,
                    delivered,
                    activations,
                )
            except (TypeError, ValueError) as bad_result:
                return _failed(
                    f"workflow returned a value that is not JSON-serializable: {bad_result}",
                    taken,
                    delivered,
                    activations,
                )
            return ReplayOutcome(
                WorkflowStatus.COMPLETED,
                new_steps=taken,
                result_json=result_json,
                delivered=delivered,
                activations=activations,
            )
        if not ctx.waiting:
            return _failed(
                "workflow is waiting on something that is not a Conveyor step (an asyncio.Event, Queue "
                "or bare Future?) and can never resume; await only ctx.llm/ctx.task/ctx.sleep results "
                "(and asyncio timers)",
                delivered=delivered,
                activations=activations,
            )
        return ReplayOutcome(
            WorkflowStatus.RUNNING,
            new_steps=tuple(ctx.new_steps),
            delivered=delivered,
            # Sorted: code often cancels the ``pending`` set of asyncio.wait, whose order is not stable.
            withdrawn=tuple(sorted(ctx.withdrawn)),
            activations=activations,
        )


def replay(
    definition: WorkflowDefinition,
    workflow_id: str,
    args: list[Any] | dict[str, Any],
    journal: Sequence[JournalEntry],
    *,
    now_us: int,
    rng: random.Random | None = None,
    activations: int | None = None,
    started_at_us: int = 0,
    workflows: WorkflowRegistry | None = None,
) -> ReplayOutcome:
    """Run ``definition`` over ``journal`` from scratch, then its new activation; see the module doc.

    ``activations``: how many activations the journal records (None: a journal written
    before they were recorded). ``started_at_us``: when the workflow started, the origin of
    ``loop.time()``.
    """
    run = WorkflowRun(
        definition, workflow_id, args, started_at_us=started_at_us, rng=rng, workflows=workflows
    )
    try:
        return run.resume(journal, activations, now_us)
    finally:
        run.close()


def _tear_down(loop: _ReplayLoop, ctx: _ReplayContext) -> None:
    """Cancel what the workflow left suspended, so its ``finally`` blocks run now, not at GC."""
    ctx.sealed = True
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        # Whatever the workflow's finally blocks raise (even sys.exit()) changes nothing now.
        with contextlib.suppress(BaseException):
            loop.run_until_quiescent(10_000)
    loop.close()


def _escaped(error: BaseException) -> str:
    return (
        f"workflow code raised {error!r}, which would stop the coordinator "
        "(sys.exit(), KeyboardInterrupt or another BaseException); the workflow is failed instead. "
        "Raise an ordinary exception to fail a workflow"
    )


def _unconsumed_message(journal: Sequence[JournalEntry], cursor: int, *, finished: bool) -> str:
    entry = journal[cursor]
    extra = len(journal) - cursor - 1
    more = f" (and {extra} later step(s))" if extra else ""
    state = "finished" if finished else "stopped asking for steps"
    return (
        f"non-determinism at step {entry.number}: the workflow {state} without asking for "
        f"{entry.kind.value} step {entry.name!r} that the journal records there{more}. Workflow code "
        "must make the same calls in the same order on every replay; start a new workflow for "
        "changed code"
    )


def _duration(value: float, what: str, *, allow_zero: bool) -> None:
    """A duration workflow code gave: a finite number of seconds within the bound, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number of seconds, not {type(value).__name__}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= MAX_DURATION_SECONDS):  # also refuses NaN
        lowest = "0" if allow_zero else "more than 0"
        raise ValueError(
            f"{what} is {value!r} seconds; it must be {lowest} and at most {MAX_DURATION_SECONDS:.0f} "
            "(10 years)"
        )


def _step_timeout(timeout: float | None) -> None:
    if timeout is not None:
        _duration(timeout, "step timeout", allow_zero=False)


def _failed(
    error: str,
    new_steps: tuple[NewStep, ...] = (),
    delivered: tuple[tuple[int, int], ...] = (),
    activations: int | None = None,
    *,
    nondeterministic_step: int | None = None,
) -> ReplayOutcome:
    return ReplayOutcome(
        WorkflowStatus.FAILED,
        new_steps=new_steps,
        error=validation.storable_text(error[-MAX_ERROR_CHARS:]),
        delivered=delivered,
        activations=activations,
        nondeterministic_step=nondeterministic_step,
    )


def _describe_exception(error: BaseException) -> str:
    if isinstance(error, WorkflowError):
        return str(error)
    frames = "".join(traceback.format_tb(error.__traceback__)[-5:])
    return f"{type(error).__name__}: {error}\n{frames}".rstrip()


def _json_arguments(call: str, value: Any) -> str:
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{call} arguments must be JSON values: {error}") from error


def _mismatch_message(entry: JournalEntry, kind: StepKind, name: str, args_json: str) -> str:
    def shorten(text: str) -> str:
        return text if len(text) <= 200 else text[:200] + "..."

    if (entry.kind, entry.name) != (kind, name):
        difference = f"the journal has {entry.kind.value} step {entry.name!r} there"
    else:
        difference = f"its arguments changed from {shorten(entry.args_json)} to {shorten(args_json)}"
    return (
        f"non-determinism at step {entry.number}: the workflow asked for {kind.value} step {name!r} "
        f"but {difference}. Workflow code must make the same calls in the same order on every replay"
    )
