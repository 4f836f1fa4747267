"""Deterministic replay of a workflow function over its journal.

:func:`replay` runs the workflow's ``async def`` from the top on a private event
loop that only runs ready callbacks (no timers, no I/O, no clock). Each ``ctx`` call
takes the next journal position: a recorded entry must match it (kind, name,
canonical arguments) and returns its recorded result; a position past the end of
the journal is a new step. The loop runs until nothing is ready, at which point the
workflow has either returned, raised, or is waiting on steps that are still
running; the outcome says which, plus the new steps to start.

Replay runs in *waves*, the way the workflow really ran: a workflow advances only
once every step it started has finished, so the results of the steps taken before a
quiescent point became known together, at that point, never earlier. Replay holds a
recorded result back until the loop is quiescent again and then resolves every step
of that wave in journal order, so the workflow code sees results at the same points
as in its first run and takes the same positions, whatever it composes (``gather``
over multi-step branches, nested gathers, helper coroutines, tasks). Only
``ctx.now()`` / ``ctx.random()`` resolve at once, as they did the first time.

Replay compares, position by position, each step's kind, name and canonical
arguments with the journal, and requires the code to ask for every journaled step:
a journal entry the code no longer asks for is non-determinism too.

Replay is pure: it reads nothing and writes nothing. It runs workflow code, so the
coordinator runs it on the replay runner's thread (:mod:`conveyor.coordinator.replay_runner`),
and the store applies its outcome in a short write that first re-checks the workflow.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import random
import traceback
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
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
#: Steps complete the moment they are taken: replay resolves them on the spot, not in a wave.
RESOLVED_AT_ONCE = frozenset({StepKind.NOW, StepKind.RANDOM, StepKind.PATCH})
#: Recorded errors keep the end of the traceback, where the cause usually is.
MAX_ERROR_CHARS = 4_000


@dataclass(frozen=True)
class JournalEntry:
    """A step as the journal records it."""

    number: int
    kind: StepKind
    name: str
    #: The canonical arguments, or, when ``args_digest`` is set, their compacted stored form
    #: (:mod:`conveyor.coordinator.store.payloads`), shown only in error messages.
    args_json: str
    status: StepStatus
    result_json: str | None = None
    error: str | None = None
    #: :func:`canonical_digest` of the canonical arguments when the journal stores them compacted.
    args_digest: str | None = None

    def was_called_with(self, args_json: str) -> bool:
        """Whether this step was taken with the canonical arguments ``args_json``: the same text,
        or for compacted arguments the same SHA-256, so replay never reassembles past requests."""
        if self.args_digest is not None:
            return canonical_digest(args_json) == self.args_digest
        return self.args_json == args_json


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


@dataclass(frozen=True)
class ReplayOutcome:
    """What one replay decided. ``status`` RUNNING means "waiting for steps"."""

    status: WorkflowStatus
    new_steps: tuple[NewStep, ...] = ()
    result_json: str | None = None
    error: str | None = None
    #: Set when the workflow failed because code and journal disagree: the first step they differ at.
    nondeterministic_step: int | None = None


class _ReplaySealed(BaseException):
    """Raised into workflow code that calls ``ctx`` while a finished replay is torn down.

    A ``BaseException`` so that ``except Exception`` in workflow code does not swallow it.
    """


class _ReplayLoop(asyncio.AbstractEventLoop):
    """An event loop that runs ready callbacks and nothing else.

    Timers and I/O would make replay depend on the world rather than the journal,
    so they raise. Only the methods asyncio's futures, tasks and combinators use are
    implemented; anything else raises ``NotImplementedError`` from the base class.
    """

    def __init__(self) -> None:
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._running = False
        self._closed = False
        #: Set when workflow code used something replay forbids (timers, the clock).
        self.fatal_error: WorkflowError | None = None

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
        raise self._forbid(
            "workflow code used an asyncio timer (asyncio.sleep, wait_for, timeout); "
            "use 'await ctx.sleep(seconds)' for a durable timer"
        )

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_later(when, callback, *args, context=context)

    def time(self) -> float:
        # asyncio.timeout() (and wait_for() on Python 3.12+) read the clock before setting a timer.
        raise self._forbid(
            "workflow code read the event-loop clock (loop.time(), asyncio.timeout, wait_for); use "
            "ctx.now() for the time and 'await ctx.sleep(seconds)' for a durable timer"
        )

    def _forbid(self, message: str) -> WorkflowError:
        """The error to raise into workflow code; recorded too, so catching it cannot save the workflow."""
        error = WorkflowError(message)
        self.fatal_error = self.fatal_error or error
        return error

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


class _ChildHandle:
    """What ``ctx.start_child`` returns: the child's id now, its result when awaited."""

    def __init__(self, workflow_id: str, future: asyncio.Future[Any]) -> None:
        self.workflow_id = workflow_id
        self._future = future

    def __await__(self) -> Generator[Any, None, Any]:
        return self._future.__await__()


class _ReplayContext:
    """The ``WorkflowContext`` handed to workflow code during replay."""

    def __init__(
        self,
        loop: _ReplayLoop,
        workflow_id: str,
        workflow_name: str,
        journal: Sequence[JournalEntry],
        now_us: int,
        rng: random.Random,
        workflows: WorkflowRegistry | None = None,
    ) -> None:
        self._loop = loop
        self._workflows = workflows
        self._workflow_id = workflow_id
        self._workflow_name = workflow_name
        self._journal = journal
        self._now_us = now_us
        self._rng = rng
        self._cursor = 0
        self.new_steps: list[NewStep] = []
        #: Recorded results of the current wave, resolved together once the loop is quiescent.
        self._deferred: list[Callable[[], None]] = []
        #: The current wave holds a step that is still running or new: the workflow waits here.
        self.waiting = False
        #: An error that fails the workflow whatever the workflow code does with it.
        self.fatal_error: WorkflowError | None = None
        self.sealed = False

    @property
    def workflow_id(self) -> str:
        return self._workflow_id

    @property
    def workflow_name(self) -> str:
        return self._workflow_name

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
        args_json = _json_arguments("ctx.llm()", request)
        return await self._take_step(
            StepKind.LLM,
            name,
            args_json,
            lambda number: NewStep(
                number, StepKind.LLM, name, args_json, LLM_TASK_KIND, retry or DEFAULT_LLM_RETRY, timeout
            ),
            lambda result: LlmResponse(_loads(result)),
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
        args_json = _json_arguments("ctx.task()", {"kind": kind, "payload": payload})
        return await self._take_step(
            StepKind.TASK,
            step_name,
            args_json,
            lambda number: NewStep(
                number, StepKind.TASK, step_name, args_json, kind, retry or DEFAULT_TASK_RETRY, timeout
            ),
            _loads,
        )

    @property
    def cursor(self) -> int:
        """The journal positions taken so far."""
        return self._cursor

    def resolve_wave(self) -> bool:
        """Resolve the recorded results held back in this wave; False if there were none."""
        deferred, self._deferred = self._deferred, []
        for resolve in deferred:
            resolve()
        return bool(deferred)

    async def sleep(self, seconds: float, *, name: str = "sleep") -> None:
        _duration(seconds, "ctx.sleep() duration", allow_zero=True)
        args_json = _json_arguments("ctx.sleep()", {"seconds": seconds})
        await self._take_step(
            StepKind.SLEEP,
            name,
            args_json,
            lambda number: NewStep(
                number, StepKind.SLEEP, name, args_json, wake_at_us=self._now_us + seconds_to_us(seconds)
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
                wake_at_us=None if timeout is None else self._now_us + seconds_to_us(timeout),
            ),
            _loads,
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
            _loads,
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
            lambda number: NewStep(number, StepKind.NOW, "now", "null", result_json=str(self._now_us)),
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

    def _take_step(
        self,
        kind: StepKind,
        name: str,
        args_json: str,
        make_new: Callable[[int], NewStep],
        decode: Callable[[str], T],
    ) -> asyncio.Future[T]:
        if self.sealed:
            raise _ReplaySealed()
        validation.step_name(name, "step name")
        number = self._cursor
        self._cursor += 1
        if number >= MAX_STEPS_PER_WORKFLOW:
            self.fatal_error = self.fatal_error or WorkflowError(
                f"workflow asked for more than {MAX_STEPS_PER_WORKFLOW} steps; split the work into "
                "several workflows"
            )
            raise self.fatal_error
        future = self._loop.create_future()
        if number < len(self._journal):
            entry = self._journal[number]
            if (entry.kind, entry.name) != (kind, name) or not entry.was_called_with(args_json):
                error = NonDeterminismError(_mismatch_message(entry, kind, name, args_json), entry.number)
                self.fatal_error = self.fatal_error or error
                raise error
            if entry.status is StepStatus.COMPLETED and kind in RESOLVED_AT_ONCE:
                # Taken and resolved on the spot the first time: the same now.
                future.set_result(decode(entry.result_json or "null"))
            elif entry.status is StepStatus.COMPLETED:
                result_json = entry.result_json or "null"
                self._deferred.append(lambda: _settle(future, lambda: decode(result_json)))
            elif entry.status in (StepStatus.FAILED, StepStatus.CANCELLED):
                failure = _failure(entry, self._workflow_id)
                self._deferred.append(lambda: _settle_failed(future, failure))
            else:
                self.waiting = True
            return future
        step = make_new(number)
        self.new_steps.append(step)
        if step.result_json is not None:
            future.set_result(decode(step.result_json))
        else:
            self.waiting = True
        return future


def replay(
    definition: WorkflowDefinition,
    workflow_id: str,
    args: list[Any] | dict[str, Any],
    journal: Sequence[JournalEntry],
    *,
    now_us: int,
    rng: random.Random | None = None,
    workflows: WorkflowRegistry | None = None,
) -> ReplayOutcome:
    """Run ``definition`` over ``journal`` until it finishes or waits; see the module doc."""
    # typeshed marks every AbstractEventLoop method abstract; at run time they merely raise
    # NotImplementedError, which is what replay wants for everything it does not support.
    loop = _ReplayLoop()  # type: ignore[abstract]
    ctx = _ReplayContext(
        loop, workflow_id, definition.name, journal, now_us, rng or random.Random(), workflows
    )
    try:
        coroutine = (
            definition.function(ctx, **args) if isinstance(args, dict) else definition.function(ctx, *args)
        )
    except TypeError as error:
        return _failed(f"arguments do not match workflow {definition.name!r}{definition.signature}: {error}")
    main = loop.create_task(coroutine)
    budget = MAX_CALLBACKS_PER_REPLAY
    try:
        while True:
            budget -= loop.run_until_quiescent(budget)
            if ctx.fatal_error is not None or loop.fatal_error is not None or ctx.waiting:
                break
            if not ctx.resolve_wave():
                break
    except WorkflowError as error:
        ctx.fatal_error = ctx.fatal_error or error
    except BaseException as error:  # sys.exit(), KeyboardInterrupt: fail the workflow alone
        ctx.fatal_error = ctx.fatal_error or WorkflowError(_escaped(error))
    ctx.fatal_error = ctx.fatal_error or loop.fatal_error
    try:
        return _decide(ctx, main, journal)
    finally:
        _tear_down(loop, ctx)


def _decide(ctx: _ReplayContext, main: asyncio.Task[Any], journal: Sequence[JournalEntry]) -> ReplayOutcome:
    if isinstance(ctx.fatal_error, NonDeterminismError):
        return _failed(str(ctx.fatal_error), nondeterministic_step=ctx.fatal_error.step_number)
    if ctx.fatal_error is not None:
        return _failed(str(ctx.fatal_error))
    if ctx.cursor < len(journal):
        return _failed(
            _unconsumed_message(journal, ctx.cursor, finished=main.done()),
            nondeterministic_step=journal[ctx.cursor].number,
        )
    if main.done():
        # A finished workflow starts nothing more, but the ctx.now()/ctx.random() values
        # its last run took may be in its result or error: journal them too.
        taken = tuple(step for step in ctx.new_steps if step.result_json is not None)
        if main.cancelled():
            return _failed("workflow code cancelled its own task", taken)
        error = main.exception()
        if error is not None:
            return _failed(_describe_exception(error), taken)
        try:
            result_json = canonical_json(main.result())
        except RecursionError:
            return _failed("workflow returned a value nested too deeply to encode as JSON", taken)
        except (TypeError, ValueError) as bad_result:
            return _failed(f"workflow returned a value that is not JSON-serializable: {bad_result}", taken)
        return ReplayOutcome(WorkflowStatus.COMPLETED, new_steps=taken, result_json=result_json)
    if not ctx.waiting:
        return _failed(
            "workflow is waiting on something that is not a Conveyor step (an asyncio.Event, Queue "
            "or bare Future?) and can never resume; await only ctx.llm/ctx.task/ctx.sleep results"
        )
    return ReplayOutcome(WorkflowStatus.RUNNING, new_steps=tuple(ctx.new_steps))


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


def _settle(future: asyncio.Future[T], decode: Callable[[], T]) -> None:
    if future.done():  # the workflow cancelled its wait on the step
        return
    try:
        future.set_result(decode())
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


def _settle_failed(future: asyncio.Future[Any], failure: WorkflowError) -> None:
    if not future.done():
        future.set_exception(failure)


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
    error: str, new_steps: tuple[NewStep, ...] = (), *, nondeterministic_step: int | None = None
) -> ReplayOutcome:
    return ReplayOutcome(
        WorkflowStatus.FAILED,
        new_steps=new_steps,
        error=validation.storable_text(error[-MAX_ERROR_CHARS:]),
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


def _loads(text: str) -> Any:
    import json

    return json.loads(text)


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
