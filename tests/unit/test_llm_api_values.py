"""Values from the LLM API are parsed defensively and bounded.

A real HTTP server on a local port answers 429 with a hostile ``retry-after``; the
real :class:`conveyor.executor.llm.LlmCaller` must classify it, bound the wait it reports and
the hold it puts on the model's pacer, and raise nothing.
"""

from __future__ import annotations

import json
import math

import pytest
from aiohttp import web

from conveyor.executor.llm import MAX_RETRY_AFTER, LlmCaller
from conveyor.executor.pacing import DEFAULT_RATE_LIMIT_WAIT, Demand
from conveyor.v1 import common_pb2

PAYLOAD = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})


async def serve_429(retry_after: str) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
        return web.json_response(body, status=429, headers={"retry-after": retry_after})

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("inf", MAX_RETRY_AFTER),
        ("1e300", MAX_RETRY_AFTER),
        ("-4611686018427387904", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("7", 7.0),
    ],
)
async def test_a_hostile_retry_after_is_bounded_and_never_wedges_the_model(
    header: str, expected: float | None
) -> None:
    runner, url = await serve_429(header)
    caller = LlmCaller(base_url=url, api_key="test", timeout=10)
    try:
        outcome = await caller.call(PAYLOAD, 10)
    finally:
        await caller.close()
        await runner.cleanup()
    assert outcome.error_class == common_pb2.ERROR_CLASS_RATE_LIMITED
    assert outcome.retry_after == expected
    # The model is held for the bounded wait (or the default), never forever.
    hold = caller.pacer.delay("m", Demand(input_tokens=0, output_tokens=0))
    assert math.isfinite(hold)
    assert hold <= (expected if expected is not None else DEFAULT_RATE_LIMIT_WAIT)


async def test_a_payload_that_is_not_an_object_fails_the_task_without_raising() -> None:
    caller = LlmCaller(base_url="http://127.0.0.1:9", api_key="test", timeout=10)
    try:
        outcome = await caller.call("[1, 2, 3]", 10)
    finally:
        await caller.close()
    assert outcome.error_class == common_pb2.ERROR_CLASS_NON_RETRYABLE
    assert "JSON object" in outcome.message
