"""HTTP/1.1 framing over raw sockets: keep-alive, pipelining, and what gets refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from conveyor.testing.simulator import Simulator

TIMEOUT = 10.0


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self) -> RawResponse:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)
        return RawResponse(int(status_line.split(" ")[1]), headers, body)

    async def at_eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), TIMEOUT) == b""


@pytest.fixture
async def connection(simulator: Simulator) -> AsyncIterator[RawConnection]:
    reader, writer = await asyncio.open_connection("127.0.0.1", simulator.port)
    yield RawConnection(reader, writer)
    writer.close()
    await writer.wait_closed()


def post(text: str, extra_headers: str = "", target: str = "/v1/messages") -> bytes:
    body = json.dumps(
        {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": text}]}
    ).encode()
    return (
        f"POST {target} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra_headers}\r\n"
    ).encode() + body


def reply_text(response: RawResponse) -> str:
    data = response.json()
    assert isinstance(data, dict)
    text: str = data["content"][0]["text"]
    return text


async def test_keep_alive_serves_many_requests_on_one_connection(
    simulator: Simulator, connection: RawConnection
) -> None:
    for i in range(3):
        await connection.send(post(f"turn {i}"))
        response = await connection.read_response()
        assert response.status == 200
        assert reply_text(response) == f"turn {i}"
    assert simulator.stats()["peak_connections"] == 1


async def test_pipelined_requests_are_answered_in_order(
    simulator: Simulator, connection: RawConnection
) -> None:
    # With random latencies, the second answer would be ready first if order were not enforced.
    simulator.update_config(latency="uniform:0,0.05")
    await connection.send(b"".join(post(f"request {i}") for i in range(5)))
    texts = [reply_text(await connection.read_response()) for _ in range(5)]
    assert texts == [f"request {i}" for i in range(5)]


async def test_request_split_across_packets(connection: RawConnection) -> None:
    data = post("in pieces")
    for i in range(0, len(data), 7):
        await connection.send(data[i : i + 7])
    assert reply_text(await connection.read_response()) == "in pieces"


async def test_query_string_is_ignored(connection: RawConnection) -> None:
    await connection.send(post("with query", target="/v1/messages?beta=true"))
    assert (await connection.read_response()).status == 200


async def test_connection_close_is_honoured(connection: RawConnection) -> None:
    await connection.send(post("bye", "Connection: close\r\n"))
    response = await connection.read_response()
    assert (response.status, response.headers["connection"]) == (200, "close")
    assert await connection.at_eof()


async def test_expect_100_continue(connection: RawConnection) -> None:
    request = post("after continue", "Expect: 100-continue\r\n")
    head, _, body = request.partition(b"\r\n\r\n")
    await connection.send(head + b"\r\n\r\n")
    interim = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await connection.send(body)
    assert reply_text(await connection.read_response()) == "after continue"


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (
            b"POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
            "Chunked request bodies are not supported",
        ),
        (b"POST /v1/messages HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400, "Invalid Content-Length"),
        (b"NONSENSE\r\n\r\n", 400, "Malformed request line"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400, "Malformed header line"),
        (b"POST /v1/messages HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n", 413, "exceeds"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000, 431, "Request headers are too large"),
    ],
)
async def test_unacceptable_framing_is_answered_then_closed(
    connection: RawConnection, request_bytes: bytes, status: int, message: str
) -> None:
    await connection.send(request_bytes)
    response = await connection.read_response()
    assert response.status == status
    error = response.json()
    assert isinstance(error, dict)
    assert message in error["error"]["message"]
    assert response.headers["connection"] == "close"
    assert await connection.at_eof()
