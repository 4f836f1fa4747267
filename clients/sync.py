"""The blocking client: :class:`~conveyor.client.client.AsyncClient`'s methods for code without asyncio.

::

    with Client("127.0.0.1:50051") as client:
        started = client.start_workflow("research", {"topic": "tides"})
        print(client.wait(started.workflow_id).result)

Each method runs the async client's method of the same name to completion on a
private event loop, so both clients behave identically (errors included) and this
module holds no logic of its own. From code already inside an event loop, use
:class:`~conveyor.client.client.AsyncClient`: a blocking call there would stall the loop,
and asyncio refuses it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from conveyor.transport import connection_from_arguments

from .client import DEFAULT_TARGET, AsyncClient

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Client, P], T]:
    @functools.wraps(method)
    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        # In the caller's context, not the one the Runner copied when it was made: the current
        # OpenTelemetry span (a contextvar) is what start_workflow sends on.
        return self._runner.run(method(self._client, *args, **kwargs), context=contextvars.copy_context())

    return call


def _blocking_iterator(
    method: Callable[Concatenate[AsyncClient, P], AsyncIterator[T]],
) -> Callable[Concatenate[Client, P], Iterator[T]]:
    @functools.wraps(method)
    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        items = method(self._client, *args, **kwargs)

        async def next_item() -> T:
            return await anext(items)

        while True:
            try:
                yield self._runner.run(next_item())
            except StopAsyncIteration:
                return

    return call


class Client:
    """Every RPC of WorkflowService and AdminService, blocking; see :class:`AsyncClient` for each."""

    def __init__(self, target: str = DEFAULT_TARGET, **options: Any) -> None:
        """``options`` are :class:`AsyncClient`'s keyword arguments (``timeout``, ...)."""
        self._runner = asyncio.Runner()

        async def connect() -> AsyncClient:
            # gRPC's asyncio channel belongs to the loop it was made on: make it on ours.
            return AsyncClient(target, **options)

        self._client = self._runner.run(connect())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Client:
        """A client configured from the environment, as :meth:`AsyncClient.from_env` describes."""
        target, security = connection_from_arguments(None, environ)
        return cls(target, security=security, **options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self._client.close())
        self._runner.close()

    @property
    def timeout(self) -> float:
        """Seconds each call may take."""
        return self._client.timeout

    # workflows
    start_workflow = _blocking(AsyncClient.start_workflow)
    start_workflows = _blocking(AsyncClient.start_workflows)
    get_workflow = _blocking(AsyncClient.get_workflow)
    list_workflows_page = _blocking(AsyncClient.list_workflows_page)
    list_workflows = _blocking_iterator(AsyncClient.list_workflows)
    count_workflows = _blocking(AsyncClient.count_workflows)
    cancel_workflow = _blocking(AsyncClient.cancel_workflow)
    explain_workflow = _blocking(AsyncClient.explain_workflow)
    signal_workflow = _blocking(AsyncClient.signal_workflow)
    wait = _blocking(AsyncClient.wait)
    watch_workflow = _blocking_iterator(AsyncClient.watch_workflow)

    # admin
    fail_pending_tasks = _blocking(AsyncClient.fail_pending_tasks)
    bump_epoch = _blocking(AsyncClient.bump_epoch)
    clear_replay_queue = _blocking(AsyncClient.clear_replay_queue)
    clear_task_queue = _blocking(AsyncClient.clear_task_queue)
    cancel_workflows = _blocking(AsyncClient.cancel_workflows)
    purge_workflows = _blocking(AsyncClient.purge_workflows)
    diagnose = _blocking(AsyncClient.diagnose)
