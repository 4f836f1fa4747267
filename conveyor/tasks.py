"""The task-handler authoring API: what a module passed to ``conveyor executor --handlers`` uses.

A handler runs one ``ctx.task(kind, payload)`` step on an executor. It takes the
JSON payload and returns a JSON value; it may be ``async def`` (run on the
executor's event loop) or a plain function (run in a worker thread)::

    from conveyor import PermanentTaskError, task_handler

    @task_handler("fetch-page")
    async def fetch_page(payload: dict) -> dict:
        ...

Raise :class:`~conveyor.errors.PermanentTaskError` for failures retrying cannot
fix and :class:`~conveyor.errors.TaskRateLimited` to wait without spending an
attempt; any other exception is retried with backoff. Tasks run at least once:
after a crash, a lost lease or a failed attempt a task may run again, so a handler
with side effects should make them idempotent. ``@task_handler(kind, context=True)``
hands it a :class:`TaskContext` as a second argument, whose ``idempotency_key`` is
the same for every attempt of the step::

    @task_handler("charge", context=True)
    async def charge(payload: dict, ctx: TaskContext) -> dict:
        return await payments.charge(payload["amount"], idempotency_key=ctx.idempotency_key)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ConfigurationError
from .user_modules import import_user_module

HANDLER_MARK = "__conveyor_task_kind__"
#: Set on handlers declared with ``context=True``: they are called as ``handler(payload, ctx)``.
CONTEXT_MARK = "__conveyor_task_context__"
#: LLM steps are run by the executor itself under this kind.
RESERVED_KINDS = frozenset({"llm"})

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class TaskContext:
    """Which step an attempt belongs to: what a handler declared with ``context=True`` receives.

    ``idempotency_key`` identifies the step, not the attempt: it is the same for every
    attempt of the step, on whichever executor runs it, after coordinator restarts and
    replays (the journal fixes each step's number), and different for every other step of
    this and of every other workflow (workflow ids are never reused). Pass it to an API
    that deduplicates by key, or record it with the side effect and check it first. Two
    side effects in one handler need two keys: derive them, ``f"{ctx.idempotency_key}:refund"``.
    """

    workflow_id: str
    #: The step's position in the workflow's journal, from 0.
    step_number: int
    #: The step's name (``ctx.task(..., name=...)``, by default the kind).
    step_name: str
    kind: str
    #: 1 for the first attempt; a retry after a failure, a timeout or a lost executor counts up.
    attempt: int
    max_attempts: int

    @property
    def idempotency_key(self) -> str:
        """``"<workflow id>:<step number>"``: stable across attempts and executors (see the class)."""
        return step_idempotency_key(self.workflow_id, self.step_number)


def step_idempotency_key(workflow_id: str, step_number: int) -> str:
    """The idempotency key of a workflow's step. Unambiguous whatever the id holds: the step
    number is the part after the last ``:``."""
    return f"{workflow_id}:{step_number}"


def task_handler(kind: str, *, context: bool = False) -> Callable[[H], H]:
    """Mark a function as the handler of task ``kind``.

    With ``context=True`` it is called as ``handler(payload, ctx)`` with a
    :class:`TaskContext`; otherwise as ``handler(payload)``. The signature is checked
    here, at import, so a mismatch is a start-up error rather than a failed task.
    """
    if not kind or kind in RESERVED_KINDS:
        raise ConfigurationError(f"task kind {kind!r} is reserved or empty; choose another name")

    def mark(function: H) -> H:
        _check_signature(kind, function, context)
        setattr(function, HANDLER_MARK, kind)
        setattr(function, CONTEXT_MARK, context)
        return function

    return mark


def takes_context(handler: Handler) -> bool:
    """Whether ``handler`` was declared with ``@task_handler(kind, context=True)``."""
    return getattr(handler, CONTEXT_MARK, False) is True


def _check_signature(kind: str, function: Handler, context: bool) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins and C callables have none: nothing to check
        return
    arguments = (None, None) if context else (None,)
    try:
        signature.bind(*arguments)
    except TypeError:
        name = getattr(function, "__qualname__", repr(function))
        if context:
            raise ConfigurationError(
                f"handler {name}{signature} of task kind {kind!r} is declared with context=True, so it "
                "is called as handler(payload, ctx): give it a second parameter for the TaskContext"
            ) from None
        raise ConfigurationError(
            f"handler {name}{signature} of task kind {kind!r} is called as handler(payload); "
            f"to receive the TaskContext as a second argument, declare it @task_handler({kind!r}, "
            "context=True)"
        ) from None


class HandlerRegistry:
    """The task handlers an executor runs, by kind."""

    def __init__(self, handlers: dict[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = dict(handlers or {})

    @classmethod
    def from_modules(cls, module_names: list[str]) -> HandlerRegistry:
        registry = cls()
        for module_name in module_names:
            module = import_user_module(module_name, "handler module")
            found = [obj for obj in vars(module).values() if callable(obj) and hasattr(obj, HANDLER_MARK)]
            if not found:
                raise ConfigurationError(f"module {module_name!r} defines no @task_handler functions")
            for function in found:
                registry.register(getattr(function, HANDLER_MARK), function)
        return registry

    def register(self, kind: str, function: Handler) -> None:
        existing = self._handlers.get(kind)
        if existing is not None and existing is not function:
            raise ConfigurationError(f"two handlers are registered for task kind {kind!r}")
        self._handlers[kind] = function

    def get(self, kind: str) -> Handler | None:
        return self._handlers.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._handlers)
