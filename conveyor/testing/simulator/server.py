"""The :class:`Simulator`: a listening socket around :class:`SimulatorApp`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

from .app import SimulatorApp
from .config import SimulatorConfig
from .http11 import HttpConnection
from .messages import Responder

__all__ = ["Simulator"]

logger = logging.getLogger(__name__)

#: Deep enough for thousands of clients connecting at once; the kernel caps it
#: at net.core.somaxconn.
LISTEN_BACKLOG = 4096

T = TypeVar("T")


class Simulator:
    """An Anthropic Messages API simulator listening on ``host:port``.

    ``port=0`` picks a free port; read the real one from :attr:`port` or use
    :attr:`base_url` as the SDK's ``base_url``. :meth:`stats`,
    :meth:`update_config` and :meth:`reset_stats` may be called from any
    thread: off the event loop they are run on it and waited for.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        responder: Responder | None = None,
    ) -> None:
        self._app = SimulatorApp(config or SimulatorConfig(), responder)
        self._host = host
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            partial(HttpConnection, self._app),
            self._host,
            self._requested_port,
            backlog=LISTEN_BACKLOG,
        )
        self._loop = loop
        logger.debug("simulator listening on %s (%s)", self.base_url, self._app.config.describe())

    async def stop(self) -> None:
        """Stop listening and drop every connection, abandoning outstanding requests."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._app.connections):
            connection.abort()
        await server.wait_closed()
        # Aborted transports report connection_lost on the next loop iteration;
        # let it run so pending timers are cancelled before the loop may close.
        await asyncio.sleep(0)
        self._loop = None
        logger.debug("simulator stopped")

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def config(self) -> SimulatorConfig:
        return self._app.config

    @property
    def responder(self) -> Responder | None:
        """What picks each reply's text (None: the config's ``reply``); settable while running."""
        return self._app.responder

    @responder.setter
    def responder(self, responder: Responder | None) -> None:
        self._app.responder = responder

    def stats(self) -> dict[str, Any]:
        """Counters, as served by ``GET /_sim/stats``."""
        return self._on_loop(self._app.stats.snapshot)

    def update_config(self, **changes: Any) -> SimulatorConfig:
        """Apply config changes live (validated; raises ``ValueError``) and return the new config."""
        return self._on_loop(partial(self._app.update_config, changes))

    def reset_stats(self) -> None:
        self._on_loop(self._app.stats.reset)

    def _on_loop(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the simulator's loop, so state is only touched there."""
        loop = self._loop
        if loop is None or not loop.is_running() or _running_loop() is loop:
            return function()

        async def call() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), loop).result()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
