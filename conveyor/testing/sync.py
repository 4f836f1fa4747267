""":class:`~conveyor.testing.ConveyorTestEnv` for synchronous tests (no asyncio in the test).

::

    with SyncConveyorTestEnv.start(workflows=[research], replies=fixed("moon")) as env:
        assert env.run("research", {"topic": "tides"}).result == "moon"

The environment runs on an event loop in a thread of its own; ``env.client`` is the
blocking :class:`~conveyor.client.sync.Client`. From an async test use
:class:`~conveyor.testing.ConveyorTestEnv` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from conveyor.client.models import Workflow
from conveyor.client.sync import Client

from .env import ConveyorTestEnv
from .simulator import MessagesRequest, Simulator

__all__ = ["SyncConveyorTestEnv"]

T = TypeVar("T")


class SyncConveyorTestEnv:
    """A running :class:`ConveyorTestEnv` driven from synchronous code."""

    def __init__(self, env: ConveyorTestEnv, loop: asyncio.AbstractEventLoop, client: Client) -> None:
        #: The asynchronous environment (its methods run on :attr:`loop`).
        self.env = env
        self.loop = loop
        self.client = client

    @classmethod
    @contextlib.contextmanager
    def start(cls, **options: Any) -> Iterator[SyncConveyorTestEnv]:
        """Start an environment with the options of :meth:`ConveyorTestEnv.start`; stop it on exit."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="conveyor-test-env", daemon=True)
        thread.start()

        def on_loop(coroutine: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

        try:
            manager = ConveyorTestEnv.start(**options)
            env = on_loop(manager.__aenter__())
            try:
                assert env.server is not None
                with Client(env.server.address, timeout=20) as client:
                    yield cls(env, loop, client)
            except BaseException as error:
                if not on_loop(manager.__aexit__(type(error), error, error.__traceback__)):
                    raise
            else:
                on_loop(manager.__aexit__(None, None, None))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def run(self, name: str, args: Any = None, *, within: float = 30.0) -> Workflow:
        """:meth:`ConveyorTestEnv.run`, blocking."""
        return asyncio.run_coroutine_threadsafe(self.env.run(name, args, within=within), self.loop).result()

    @property
    def simulator(self) -> Simulator:
        assert self.env.simulator is not None
        return self.env.simulator

    @property
    def llm_requests(self) -> list[MessagesRequest]:
        return self.env.llm_requests
