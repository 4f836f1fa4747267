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
after a crash or a lost lease a task may run again, so handlers with side effects
should be idempotent.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ConfigurationError

HANDLER_MARK = "__conveyor_task_kind__"
#: LLM steps are run by the executor itself under this kind.
RESERVED_KINDS = frozenset({"llm"})

Handler = Callable[[Any], Any]
H = TypeVar("H", bound=Handler)


def task_handler(kind: str) -> Callable[[H], H]:
    """Mark a function as the handler of task ``kind``."""
    if not kind or kind in RESERVED_KINDS:
        raise ConfigurationError(f"task kind {kind!r} is reserved or empty; choose another name")

    def mark(function: H) -> H:
        setattr(function, HANDLER_MARK, kind)
        return function

    return mark


class HandlerRegistry:
    """The task handlers an executor runs, by kind."""

    def __init__(self, handlers: dict[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = dict(handlers or {})

    @classmethod
    def from_modules(cls, module_names: list[str]) -> HandlerRegistry:
        registry = cls()
        for module_name in module_names:
            try:
                module = importlib.import_module(module_name)
            except ImportError as error:
                raise ConfigurationError(f"cannot import handler module {module_name!r}: {error}") from error
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
