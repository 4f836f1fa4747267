"""The workflow authoring API: what a module passed to ``--workflows`` uses.

A workflow is an ``async def`` taking a :class:`WorkflowContext` first, marked with
:func:`workflow`::

    from conveyor import WorkflowContext, workflow

    @workflow
    async def research(ctx: WorkflowContext, topic: str) -> str:
        claims = await ctx.llm(model=MODEL, max_tokens=200, name="extract",
                               messages=[{"role": "user", "content": f"Claims about {topic}"}])
        a, b = await asyncio.gather(
            ctx.llm(model=MODEL, max_tokens=200, name="analyze_a", messages=...),
            ctx.llm(model=MODEL, max_tokens=200, name="analyze_b", messages=...),
        )
        return (await ctx.llm(..., name="summarize")).text

The coordinator runs the function by deterministic replay: every ``ctx`` call is a
journal entry, and the function runs in *activations*. The first runs it from the top
until it waits; each later one hands it the outcomes of the steps that finished since
(results, ``StepFailed``, fired timers) and runs it until it waits again. A workflow
advances as soon as any step it started finishes, whatever else still runs, so
``asyncio.wait(..., return_when=FIRST_COMPLETED)``, ``asyncio.as_completed``,
``asyncio.wait_for(step, timeout)`` and ``asyncio.timeout()`` work over steps. asyncio
timers are durable: ``asyncio.sleep(n)`` (and every timeout) is a sleep step, as
``ctx.sleep(n)`` is, and survives coordinator restarts; ``loop.time()`` is a virtual
clock (seconds since the workflow started, as of the activation). A step whose wait
the code cancels (the loser of a race, a timed-out ``wait_for``) is cancelled on its
executor; ``asyncio.shield()`` keeps it running.

Workflow code must depend only on its arguments and on what ``ctx`` returns: use
``ctx.now()`` / ``ctx.random()`` instead of ``time`` / ``random``, and do I/O in steps.
Steps started before the function next awaits something unfinished (``asyncio.gather``)
start together, in one transaction. Iterate over the ``done`` set of ``asyncio.wait`` in
an order of your own (``[t for t in tasks if t in done]``): a set's order differs from
run to run, and so would the steps taken from it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from .errors import ConfigurationError

WORKFLOW_MARK = "__conveyor_workflow__"
#: Longest sleep, step timeout or retry backoff workflow code may ask for.
MAX_DURATION_SECONDS = 10 * 365 * 24 * 3600.0
#: Most attempts (or rate-limit waits) a retry policy may allow.
MAX_RETRY_COUNT = 1_000_000


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently the queue retries a failing step.

    The delay before attempt ``n + 1`` is ``initial_backoff * multiplier ** (n - 1)``
    seconds, capped at ``max_backoff`` and jittered down by up to half so that steps
    failing together do not retry together. Rate-limited attempts (HTTP 429) wait for
    the API's ``retry-after`` instead and do not count against ``max_attempts``; at
    most ``max_rate_limit_waits`` of them are tolerated.
    """

    max_attempts: int = 5
    initial_backoff: float = 1.0
    multiplier: float = 2.0
    max_backoff: float = 60.0
    max_rate_limit_waits: int = 20

    def __post_init__(self) -> None:
        # Stored in integer and float columns and added to int64 microsecond clocks: bounded here,
        # where workflow code sets them, so a wild value fails its own workflow and nothing else.
        if not 1 <= self.max_attempts <= MAX_RETRY_COUNT:
            raise ValueError(f"max_attempts must be 1 to {MAX_RETRY_COUNT}, not {self.max_attempts}")
        for label, seconds in (("initial_backoff", self.initial_backoff), ("max_backoff", self.max_backoff)):
            if not 0 <= seconds <= MAX_DURATION_SECONDS:  # also refuses NaN
                raise ValueError(
                    f"{label} must be 0 to {MAX_DURATION_SECONDS:.0f} seconds (10 years), not {seconds}"
                )
        if not (self.multiplier >= 1 and math.isfinite(self.multiplier)):
            raise ValueError(f"multiplier must be a finite number of at least 1, not {self.multiplier}")
        if not 0 <= self.max_rate_limit_waits <= MAX_RETRY_COUNT:
            raise ValueError(
                f"max_rate_limit_waits must be 0 to {MAX_RETRY_COUNT}, not {self.max_rate_limit_waits}"
            )

    def backoff(self, failed_attempts: int) -> float:
        """The un-jittered delay after ``failed_attempts`` failures (1 for the first)."""
        return min(self.max_backoff, self.initial_backoff * self.multiplier ** max(failed_attempts - 1, 0))


#: LLM calls fail transiently (529, timeouts) often enough to deserve five tries.
DEFAULT_LLM_RETRY = RetryPolicy(max_attempts=5)
#: Handler tasks run user code that may not be idempotent: fewer retries by default.
DEFAULT_TASK_RETRY = RetryPolicy(max_attempts=3)


@dataclass(frozen=True)
class LlmResponse:
    """The Messages API response of an LLM step, as recorded in the journal."""

    raw: Mapping[str, Any]

    @property
    def text(self) -> str:
        """The text blocks of the reply, concatenated."""
        return "".join(block.get("text", "") for block in self.content if block.get("type") == "text")

    @property
    def content(self) -> list[dict[str, Any]]:
        return list(self.raw.get("content", []))

    @property
    def usage(self) -> dict[str, Any]:
        return dict(self.raw.get("usage", {}))

    @property
    def stop_reason(self) -> str | None:
        return self.raw.get("stop_reason")

    @property
    def model(self) -> str | None:
        return self.raw.get("model")

    def message(self) -> Any:
        """The response as the SDK's ``anthropic.types.Message`` (validated on demand)."""
        from anthropic.types import Message

        return Message.model_validate(self.raw)


class ChildHandle(Protocol):
    """A started child workflow: ``await handle`` for its result (or ``ChildWorkflowFailed``)."""

    @property
    def workflow_id(self) -> str: ...

    def __await__(self) -> Generator[Any, None, Any]: ...


class WorkflowContext(Protocol):
    """What a workflow can do. Every method except the properties is a journal entry."""

    @property
    def workflow_id(self) -> str: ...

    @property
    def workflow_name(self) -> str: ...

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
        """One Anthropic Messages API call, made by an executor.

        Takes the arguments of ``anthropic.AsyncAnthropic().messages.create`` (JSON
        values only). ``retry`` defaults to :data:`DEFAULT_LLM_RETRY`; ``timeout`` (s)
        bounds each attempt. Raises :class:`~conveyor.errors.StepFailed` for good failures.
        """
        ...

    async def task(
        self,
        kind: str,
        payload: Any = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One call of the executor-side handler registered for ``kind``; returns its JSON result."""
        ...

    async def sleep(self, seconds: float, *, name: str = "sleep") -> None:
        """A durable timer: survives coordinator restarts, costs no executor slot."""
        ...

    async def wait_for_signal(self, name: str, *, timeout: float | None = None) -> Any:
        """Wait for the next signal ``name`` sent to this workflow (``SignalWorkflow``); return its payload.

        Signals are durable and buffered: one sent before the workflow waits is kept and
        delivered, in the order sent, to the next waits for that name. With ``timeout``
        (seconds), raises :class:`~conveyor.errors.SignalTimeout` when none arrives in time.
        """
        ...

    async def child(self, workflow: str, args: Any = None, *, name: str | None = None) -> Any:
        """Run workflow ``workflow`` with ``args`` as a child and return its result.

        The child is a workflow of its own (own journal, shown by ``conveyor get``) that keeps
        its root's place in the FIFO queue. Raises :class:`~conveyor.errors.ChildWorkflowFailed`
        when it fails or is cancelled. ``name`` names the step (default: the workflow name).
        """
        ...

    def start_child(self, workflow: str, args: Any = None, *, name: str | None = None) -> ChildHandle:
        """Start a child workflow without waiting for it; ``await handle`` later for its result.

        Children still running when the parent finishes are cancelled with it.
        """
        ...

    def patched(self, change_id: str) -> bool:
        """Whether this run takes the new code path of change ``change_id`` (safe code changes).

        True where the workflow reaches this call for the first time on code that has it (a
        marker is journaled there); False when replaying a journal recorded by older code at
        this point, so workflows in flight keep their old path::

            if ctx.patched("shorter-prompt"):
                reply = await ctx.llm(model=MODEL, messages=short, max_tokens=300)
            else:
                reply = await ctx.llm(model=MODEL, messages=long, max_tokens=300)

        Remove the old branch (keep ``patched``) once no workflow started before the change
        is running; remove the call itself only once none started before *that* deploy runs.
        """
        ...

    def now(self) -> datetime:
        """The current UTC time, recorded on first execution and replayed thereafter."""
        ...

    def random(self) -> float:
        """A float in [0, 1), recorded on first execution and replayed thereafter."""
        ...


WorkflowFunction = Callable[..., Coroutine[Any, Any, Any]]
F = TypeVar("F", bound=WorkflowFunction)


def workflow(fn: F | None = None, *, name: str | None = None) -> Any:
    """Mark an ``async def`` as a workflow, registered under ``name`` (default: its own name).

    Usable bare (``@workflow``) or with arguments (``@workflow(name="research-v2")``).
    """

    def mark(function: F) -> F:
        if not inspect.iscoroutinefunction(function):
            raise ConfigurationError(f"workflow {function.__qualname__} must be an 'async def' function")
        setattr(function, WORKFLOW_MARK, name or function.__name__)
        return function

    return mark(fn) if fn is not None else mark


@dataclass(frozen=True)
class WorkflowDefinition:
    name: str
    function: WorkflowFunction
    signature: inspect.Signature = field(compare=False)

    def check_arguments(self, args: list[Any] | dict[str, Any]) -> None:
        """Raise ``TypeError`` if ``args`` cannot be passed to the workflow function."""
        if isinstance(args, dict):
            self.signature.bind(None, **args)
        else:
            self.signature.bind(None, *args)


class WorkflowRegistry:
    """The workflows a coordinator can run, by name."""

    def __init__(self, definitions: Mapping[str, WorkflowDefinition] | None = None) -> None:
        self._definitions: dict[str, WorkflowDefinition] = dict(definitions or {})

    @classmethod
    def from_modules(cls, module_names: list[str]) -> WorkflowRegistry:
        """Import each module and collect the functions marked with :func:`workflow`."""
        from .user_modules import import_user_module

        registry = cls()
        for module_name in module_names:
            module = import_user_module(module_name, "workflow module")
            found = [obj for obj in vars(module).values() if callable(obj) and hasattr(obj, WORKFLOW_MARK)]
            if not found:
                raise ConfigurationError(f"module {module_name!r} defines no @workflow functions")
            for function in found:
                registry.register(function)
        return registry

    def register(self, function: WorkflowFunction, name: str | None = None) -> None:
        workflow_name = name or getattr(function, WORKFLOW_MARK, None) or function.__name__
        if not inspect.iscoroutinefunction(function):
            raise ConfigurationError(f"workflow {workflow_name!r} must be an 'async def' function")
        existing = self._definitions.get(workflow_name)
        if existing is not None and existing.function is not function:
            raise ConfigurationError(f"two workflows are registered as {workflow_name!r}")
        self._definitions[workflow_name] = WorkflowDefinition(
            workflow_name, function, inspect.signature(function)
        )

    def get(self, name: str) -> WorkflowDefinition | None:
        return self._definitions.get(name)

    def names(self) -> list[str]:
        return sorted(self._definitions)
