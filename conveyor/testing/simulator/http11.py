"""A minimal HTTP/1.1 server on ``asyncio.Protocol``.

Why not a framework: the simulator must sustain well over a thousand requests
per second and thousands of idle-but-open connections on a small machine
while leaving CPU for the code under test. A bare protocol costs a few
microseconds per request and a few kilobytes per connection; there is no
task per connection and no task per request.

Scope is exactly what HTTP clients of the Messages API need: keep-alive,
``Content-Length`` bodies (chunked bodies are refused with 411), in-order
handling of pipelined requests and ``Expect: 100-continue``.

The application answers a request either at once (:class:`Response`) or later
(:class:`Deferred`); a deferred answer is a timer on the event loop, cancelled
if the client goes away first, which is how simulated latency and hung
requests stay cheap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import error_json

__all__ = ["Application", "Deferred", "HttpConnection", "Request", "Response"]

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    529: "Overloaded",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class Request:
    method: str
    #: The request target without its query string.
    path: str
    #: Header names lower-cased; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: Sequence[tuple[str, str]] = ()
    #: Announce the full Content-Length, send half the body, then close the
    #: connection: a simulated network failure mid-response.
    truncate: bool = False


@dataclass(slots=True)
class Deferred:
    """An answer produced later, or never.

    ``complete`` runs after ``delay`` seconds on the event loop and returns
    the response to send. With ``delay`` None the request hangs until the
    client disconnects. ``abandon`` runs instead of ``complete`` if the
    connection closes first, so the application can release what it reserved.
    """

    delay: float | None
    complete: Callable[[], Response]
    abandon: Callable[[], None]


class Application(Protocol):
    def handle(self, request: Request) -> Response | Deferred: ...

    def connection_opened(self, connection: HttpConnection) -> None: ...

    def connection_closed(self, connection: HttpConnection) -> None: ...


class _FramingError(Exception):
    """The byte stream is not HTTP we accept; answer and drop the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class _Head:
    method: str
    path: str
    headers: dict[str, str]
    content_length: int
    keep_alive: bool


class HttpConnection(asyncio.Protocol):
    """One client connection, handling its requests strictly one at a time.

    While a request is outstanding, further pipelined bytes are only buffered;
    they are parsed once the answer has been written, which keeps responses
    in request order as HTTP/1.1 requires.
    """

    def __init__(self, app: Application) -> None:
        self._app = app
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: _Head | None = None
        self._keep_alive = True
        self._pending: Deferred | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._app.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        if self._pending is None:
            self._process()
        elif len(self._buffer) > MAX_HEADER_BYTES + MAX_BODY_BYTES and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.abandon()
        self._app.connection_closed(self)

    def close(self) -> None:
        """Close once buffered output is flushed; any outstanding request is abandoned."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection immediately, discarding unsent output."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def _process(self) -> None:
        """Answer every complete request in the buffer until one is deferred."""
        while self._pending is None and not self._closing:
            try:
                request = self._next_request()
            except _FramingError as exc:
                self._keep_alive = False
                self._send(Response(exc.status, error_json(_framing_error_type(exc.status), str(exc))))
                return
            if request is None:
                return
            outcome = self._app.handle(request)
            if isinstance(outcome, Response):
                self._send(outcome)
            elif outcome.delay == 0:
                self._send(outcome.complete())
            else:
                self._pending = outcome
                if outcome.delay is not None:
                    self._timer = asyncio.get_running_loop().call_later(outcome.delay, self._complete_pending)

    def _complete_pending(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, None
        assert pending is not None
        self._send(pending.complete())
        if self._reading_paused and self._transport is not None and not self._closing:
            self._reading_paused = False
            self._transport.resume_reading()
        self._process()

    def _next_request(self) -> Request | None:
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES)
            if end < 0:
                if len(self._buffer) >= MAX_HEADER_BYTES:
                    raise _FramingError(431, "Request headers are too large")
                return None
            self._head = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            self._keep_alive = self._head.keep_alive
            expects_continue = self._head.headers.get("expect", "").lower() == "100-continue"
            if expects_continue and len(self._buffer) < self._head.content_length and self._transport:
                self._transport.write(_CONTINUE)
        head = self._head
        if len(self._buffer) < head.content_length:
            return None
        body = bytes(self._buffer[: head.content_length])
        del self._buffer[: head.content_length]
        self._head = None
        return Request(head.method, head.path, head.headers, body)

    def _send(self, response: Response) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        lines = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
            "content-type: application/json",
            f"content-length: {len(response.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if not self._keep_alive:
            lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if response.truncate:
            transport.write(head + response.body[: len(response.body) // 2])
            self.close()
        else:
            transport.write(head + response.body)
            if not self._keep_alive:
                self.close()


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise _FramingError(400, f"Malformed request line {lines[0][:100]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _FramingError(400, f"Malformed header line {line[:100]!r}")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _FramingError(411, "Chunked request bodies are not supported; send a Content-Length header")
    length_text = headers.get("content-length", "0")
    if not (length_text.isascii() and length_text.isdigit()):
        raise _FramingError(400, f"Invalid Content-Length {length_text[:40]!r}")
    content_length = int(length_text)
    if content_length > MAX_BODY_BYTES:
        raise _FramingError(413, f"Request body of {content_length} bytes exceeds {MAX_BODY_BYTES} bytes")
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return _Head(method, target.partition("?")[0], headers, content_length, keep_alive)


def _framing_error_type(status: int) -> str:
    return "request_too_large" if status == 413 else "invalid_request_error"
