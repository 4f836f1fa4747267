"""The HTTP side of monitoring (metrics, the status page): bounded, and behind a token when asked.

Both endpoints are reachable by anyone who can reach their port, so each is served by
an aiohttp server on the process's own event loop that a caller cannot grow:

* at most :data:`MAX_CONNECTIONS` connections at once; one more is answered 503 and closed
  (the thread-per-connection server of ``prometheus_client`` held a thread for every
  half-open socket, forever);
* a connection idle for :data:`IDLE_TIMEOUT` seconds (one that never sends a request
  included) is closed;
* with an ``authorize`` function, every request must carry a token it accepts:
  ``Authorization: Bearer TOKEN`` (Prometheus: ``authorization: {credentials_file: ...}``)
  or HTTP Basic with the token as the password (browsers ask for it on the status page).
  Anything else is 401.

Who holds the token: the coordinator accepts tokens of its tokens file with the
``monitoring`` (or ``admin``) role; an executor accepts the one in its
``--monitoring-token-file``. Without authentication, the loopback rule of
:func:`check_exposure` applies, as for the coordinator's gRPC port.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .errors import ConfigurationError

log = logging.getLogger(__name__)

#: Connections open at once per monitoring server; a scraper and a few browsers need far fewer.
MAX_CONNECTIONS = 64
#: Seconds a connection may sit without a request before it is closed.
IDLE_TIMEOUT = 15.0
#: Whether a presented token may read this server's pages.
Authorize = Callable[[str], bool]
_REALM = 'Basic realm="conveyor monitoring", charset="UTF-8"'
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Busy(asyncio.Protocol):
    """Answers a connection over the limit 503 and closes it, reading nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


def presented_token(request: web.BaseRequest) -> str | None:
    """The token of a request: a Bearer token, or the password of HTTP Basic credentials."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def _authentication(authorize: Authorize) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        token = presented_token(request)
        if token is None or not authorize(token):
            raise web.HTTPUnauthorized(
                text="this endpoint needs a monitoring token: 'Authorization: Bearer TOKEN' "
                "(or HTTP Basic with the token as password)\n",
                headers={"WWW-Authenticate": _REALM},
            )
        return await handler(request)

    return authenticate


class MonitoringServer:
    """An aiohttp application on ``host:port``; ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        app: web.Application,
        *,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        idle = IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle)
        self._max_connections = MAX_CONNECTIONS if max_connections is None else max_connections
        self._server: asyncio.Server | None = None
        self.port = 0

    @staticmethod
    def application(authorize: Authorize | None) -> web.Application:
        """A new application, behind ``authorize`` when given."""
        return web.Application(middlewares=[] if authorize is None else [_authentication(authorize)])

    @property
    def connections(self) -> int:
        """Connections open now (for tests and logs)."""
        return 0 if self._runner.server is None else len(self._runner.server.connections)

    async def start(self, host: str, port: int) -> int:
        """Serve on ``host:port`` (0: any free port); returns the bound port."""
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None
        limit = self._max_connections

        def protocol() -> asyncio.Protocol:
            if len(handlers.connections) >= limit:
                return _Busy()
            return handlers()

        try:
            self._server = await asyncio.get_running_loop().create_server(protocol, host, port)
        except OSError as error:
            await self._runner.cleanup()
            raise ConfigurationError(f"cannot listen on {host}:{port}: {error.strerror}") from None
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()


def metrics_application(registry: CollectorRegistry, authorize: Authorize | None) -> web.Application:
    """``/metrics``: ``registry`` in the Prometheus text format."""

    async def metrics(request: web.Request) -> web.Response:
        # Collecting reads in-memory counters only: cheap enough for the event loop.
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = MonitoringServer.application(authorize)
    app.router.add_get("/metrics", metrics)
    return app


async def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, authorize: Authorize | None = None
) -> MonitoringServer:
    """Serve ``registry`` at ``http://host:port/metrics``; the caller stops the returned server."""
    server = MonitoringServer(metrics_application(registry, authorize))
    await server.start(host, port)
    return server


def check_exposure(host: str, *, authenticated: bool, insecure: bool, what: str, fix: str) -> None:
    """Refuse to serve ``what`` unauthenticated on a non-loopback ``host`` unless ``insecure``."""
    if authenticated or is_loopback(host):
        return
    if not insecure:
        raise ConfigurationError(
            f"refusing to serve {what} on {host} without authentication: anyone who can reach it could "
            f"read it. {fix}, listen on 127.0.0.1, or pass --insecure if this network is trusted"
        )
    log.warning("serving %s on %s without authentication (--insecure): anyone may read it", what, host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name (or a wildcard) may resolve to anything: treat it as exposed


def read_token_file(path: Path, flag: str) -> str:
    """The token in ``path`` (surrounding whitespace dropped)."""
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise ConfigurationError(f"cannot read {flag} {path}: {error.strerror}") from None
    if len(token) < 16:
        raise ConfigurationError(
            f"{flag} {path} holds a {len(token)}-character token; use at least 16 random characters"
        )
    return token
