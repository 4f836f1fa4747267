"""The simulator end to end through the real anthropic SDK (both transports)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime

import anthropic
import httpx2
import pytest
from anthropic.types import Message, MessageParam

from conveyor.testing.simulator import Simulator

PROMPT = "Tell me about conveyor belts."


def error_of(exc: anthropic.APIStatusError) -> object:
    """The ``error`` object of an API error envelope, as the SDK received it."""
    assert isinstance(exc.body, dict)
    assert exc.body["type"] == "error"
    return exc.body["error"]


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


async def ask(client: anthropic.AsyncAnthropic, text: str = PROMPT, max_tokens: int = 100) -> Message:
    return await client.messages.create(model="claude-sim", max_tokens=max_tokens, messages=user(text))


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll a condition that becomes true after some event-loop work, without fixed sleeps.

    Polling is the point: the conditions are server counters with no event to wait on.
    """
    async with asyncio.timeout(30):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_success_parses_into_a_message(client: anthropic.AsyncAnthropic) -> None:
    raw = await client.messages.with_raw_response.create(
        model="claude-sim", max_tokens=100, messages=user(PROMPT)
    )
    message = await raw.parse()
    assert isinstance(message, Message)
    assert message.id.startswith("msg_sim_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "claude-sim")
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [("text", PROMPT)]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert message.usage.input_tokens == math.ceil(len(PROMPT) / 4) + 3
    assert message.usage.output_tokens == math.ceil(len(PROMPT) / 4)
    assert (message.usage.cache_creation_input_tokens, message.usage.cache_read_input_tokens) == (0, 0)
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["request-id"].startswith("req_sim_")


async def test_ids_are_unique(client: anthropic.AsyncAnthropic) -> None:
    ids = {(await ask(client)).id for _ in range(5)}
    assert len(ids) == 5


async def test_echoes_last_user_turn_from_text_blocks(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="m",
        max_tokens=100,
        system="You are terse.",
        messages=[
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "earlier answer"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "latest "}, {"type": "text", "text": "question"}],
            },
        ],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "latest question"
    chars = len("You are terse.") + len("earlier question") + len("earlier answer") + len("latest question")
    assert message.usage.input_tokens == math.ceil(chars / 4) + 3 * 3


async def test_max_tokens_truncates_the_reply(client: anthropic.AsyncAnthropic) -> None:
    message = await ask(client, "abcdefghijklmnopqrstuvwxyz", max_tokens=2)
    assert message.content[0].type == "text"
    assert message.content[0].text == "abcdefgh"
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


async def test_fixed_reply_mode(simulator: Simulator, client: anthropic.AsyncAnthropic) -> None:
    simulator.update_config(reply="fixed:All good.")
    message = await ask(client)
    assert message.content[0].type == "text"
    assert message.content[0].text == "All good."


@pytest.mark.parametrize(
    ("max_tokens", "messages", "expected"),
    [
        (0, user("hi"), "max_tokens: Input should be greater than or equal to 1"),
        (10, [], "messages: At least one message is required"),
        (10, [{"role": "robot", "content": "hi"}], "messages.0.role: Input should be 'user' or 'assistant'"),
    ],
)
async def test_invalid_request_is_a_bad_request_error(
    client: anthropic.AsyncAnthropic, max_tokens: int, messages: list[MessageParam], expected: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as excinfo:
        await client.messages.create(model="m", max_tokens=max_tokens, messages=messages)
    assert excinfo.value.status_code == 400
    assert error_of(excinfo.value) == {"type": "invalid_request_error", "message": expected}
    assert expected in str(excinfo.value)


async def test_missing_field_is_reported_like_the_real_api(simulator: Simulator) -> None:
    async with httpx2.AsyncClient(base_url=simulator.base_url) as http:
        response = await http.post("/v1/messages", json={"model": "m", "messages": user("hi")})
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }


async def test_wrong_api_key_is_an_authentication_error(simulator: Simulator) -> None:
    simulator.update_config(api_key="right-key")
    async with anthropic.AsyncAnthropic(base_url=simulator.base_url, api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as excinfo:
            await ask(wrong)
    assert error_of(excinfo.value) == {"type": "authentication_error", "message": "invalid x-api-key"}
    async with anthropic.AsyncAnthropic(
        base_url=simulator.base_url, api_key="right-key", max_retries=0
    ) as right:
        assert (await ask(right, "ok")).content[0].type == "text"
    async with httpx2.AsyncClient(base_url=simulator.base_url) as http:
        body = {"model": "m", "max_tokens": 5, "messages": user("hi")}
        assert (
            await http.post("/v1/messages", json=body, headers={"x-api-key": "right-key"})
        ).status_code == 200
        assert (await http.post("/v1/messages", json=body)).status_code == 401


def ratelimit_headers(headers: httpx2.Headers, kind: str) -> tuple[int, int, datetime]:
    prefix = f"anthropic-ratelimit-{kind}"
    return (
        int(headers[f"{prefix}-limit"]),
        int(headers[f"{prefix}-remaining"]),
        datetime.fromisoformat(headers[f"{prefix}-reset"]),
    )


async def test_requests_per_minute_limit(simulator: Simulator, client: anthropic.AsyncAnthropic) -> None:
    simulator.update_config(rpm=2)
    first = await client.messages.with_raw_response.create(model="m", max_tokens=10, messages=user("1"))
    limit, remaining, _ = ratelimit_headers(first.headers, "requests")
    assert (limit, remaining) == (2, 1)
    await ask(client, "2")
    with pytest.raises(anthropic.RateLimitError) as excinfo:
        await ask(client, "3")
    error = excinfo.value
    assert error.status_code == 429
    assert "2 requests per minute" in str(error_of(error))
    assert int(error.response.headers["retry-after"]) >= 1
    limit, remaining, reset = ratelimit_headers(error.response.headers, "requests")
    assert (limit, remaining) == (2, 0)
    assert reset > datetime.now(UTC)
    assert "anthropic-ratelimit-input-tokens-limit" not in error.response.headers
    stats = simulator.stats()
    assert (stats["successes"], stats["rate_limited"]) == (2, 1)


async def test_input_tokens_per_minute_limit(simulator: Simulator, client: anthropic.AsyncAnthropic) -> None:
    simulator.update_config(itpm=100)
    await ask(client, "x" * 300)  # ceil(300 / 4) + 3 = 78 of 100 input tokens
    with pytest.raises(anthropic.RateLimitError) as excinfo:
        await ask(client, "x" * 300)
    error = excinfo.value
    assert "100 input tokens per minute" in str(error_of(error))
    assert int(error.response.headers["retry-after"]) >= 1
    limit, remaining, _ = ratelimit_headers(error.response.headers, "input-tokens")
    assert limit == 100
    assert remaining < 78


async def test_output_tokens_per_minute_limit_reserves_max_tokens(
    simulator: Simulator, client: anthropic.AsyncAnthropic
) -> None:
    simulator.update_config(otpm=100)
    # A short reply uses 1 of the 60 reserved output tokens; the other 59 come back.
    await ask(client, "hi", max_tokens=60)
    await ask(client, "hi", max_tokens=60)
    # A reply that fills max_tokens keeps all 60, leaving too few for another reservation.
    await ask(client, "y" * 1000, max_tokens=60)
    with pytest.raises(anthropic.RateLimitError) as excinfo:
        await ask(client, "hi", max_tokens=60)
    error = excinfo.value
    assert "100 output tokens per minute" in str(error_of(error))
    assert int(error.response.headers["retry-after"]) >= 1
    limit, remaining, _ = ratelimit_headers(error.response.headers, "output-tokens")
    assert limit == 100
    assert remaining < 60


async def test_error_529_is_overloaded(simulator: Simulator, client: anthropic.AsyncAnthropic) -> None:
    simulator.update_config(error_529=1.0)
    with pytest.raises(anthropic.APIStatusError) as excinfo:
        await ask(client)
    assert isinstance(excinfo.value, anthropic.OverloadedError)
    assert excinfo.value.status_code == 529
    assert error_of(excinfo.value) == {"type": "overloaded_error", "message": "Overloaded"}
    assert simulator.stats()["overloaded"] == 1


async def test_error_500_is_an_internal_server_error(
    simulator: Simulator, client: anthropic.AsyncAnthropic
) -> None:
    simulator.update_config(error_500=1.0)
    with pytest.raises(anthropic.InternalServerError) as excinfo:
        await ask(client)
    assert excinfo.value.status_code == 500
    assert error_of(excinfo.value) == {"type": "api_error", "message": "Internal server error"}
    assert simulator.stats()["server_errors"] == 1


async def test_truncated_body_is_a_connection_error(
    simulator: Simulator, client: anthropic.AsyncAnthropic
) -> None:
    simulator.update_config(truncate=1.0)
    with pytest.raises(anthropic.APIConnectionError) as excinfo:
        await ask(client)
    assert not isinstance(excinfo.value, anthropic.APITimeoutError)
    stats = simulator.stats()
    assert (stats["truncations"], stats["successes"], stats["by_status"]) == (1, 0, {})


async def test_hang_times_out_and_is_released_when_the_client_leaves(
    simulator: Simulator, client: anthropic.AsyncAnthropic
) -> None:
    simulator.update_config(hang=1.0)
    with pytest.raises(anthropic.APITimeoutError):
        await ask(client.with_options(timeout=0.3))
    assert simulator.stats()["hangs"] == 1
    # The timed-out connection is closed by the client, which frees the hung request.
    await wait_until(lambda: simulator.stats()["in_flight"] == 0)
    assert simulator.stats()["client_disconnects"] == 0


async def test_faults_follow_their_shares_reproducibly(simulator: Simulator) -> None:
    async def outcomes() -> list[int]:
        simulator.update_config(seed=99, error_529=0.25, error_500=0.25)
        statuses = []
        async with anthropic.AsyncAnthropic(
            base_url=simulator.base_url, api_key="t", max_retries=0
        ) as client:
            for _ in range(40):
                try:
                    await ask(client)
                    statuses.append(200)
                except anthropic.APIStatusError as exc:
                    statuses.append(exc.status_code)
        return statuses

    first = await outcomes()
    assert first == await outcomes()
    assert {200, 500, 529} == set(first)


async def test_stats_count_requests_tokens_and_duplicates(
    simulator: Simulator, client: anthropic.AsyncAnthropic
) -> None:
    await ask(client, "same question")
    await ask(client, "same question")
    await ask(client, "another question")
    async with httpx2.AsyncClient(base_url=simulator.base_url) as http:
        # Same request as the first, keys in another order: still a duplicate.
        reordered = {"messages": user("same question"), "model": "claude-sim", "max_tokens": 100}
        assert (await http.post("/v1/messages", json=reordered)).status_code == 200
        assert (await http.post("/v1/messages", json={"model": "m"})).status_code == 400
        stats = (await http.get("/_sim/stats")).json()
    assert stats == simulator.stats()
    assert stats["requests"] == 5
    assert stats["by_status"] == {"200": 4, "400": 1}
    assert stats["successes"] == 4
    assert stats["duplicate_successes"] == 2
    same, other = math.ceil(len("same question") / 4), math.ceil(len("another question") / 4)
    assert stats["input_tokens"] == 3 * (same + 3) + (other + 3)
    assert stats["output_tokens"] == 3 * same + other
    assert (stats["in_flight"], stats["peak_in_flight"]) == (0, 1)
    assert stats["open_connections"] >= 1
    assert stats["peak_connections"] >= stats["open_connections"]


async def test_reset_zeroes_counters(simulator: Simulator, client: anthropic.AsyncAnthropic) -> None:
    await ask(client)
    async with httpx2.AsyncClient(base_url=simulator.base_url) as http:
        response = await http.post("/_sim/reset")
    assert response.status_code == 200
    stats = simulator.stats()
    assert stats["requests"] == stats["successes"] == stats["output_tokens"] == 0
    assert stats["by_status"] == {}
    await ask(client)
    assert simulator.stats()["duplicate_successes"] == 0  # the set of answered requests is forgotten too
    simulator.reset_stats()
    assert simulator.stats()["requests"] == 0


async def test_live_config_update_over_http(simulator: Simulator, client: anthropic.AsyncAnthropic) -> None:
    async with httpx2.AsyncClient(base_url=simulator.base_url) as http:
        response = await http.post(
            "/_sim/config", json={"reply": "fixed:changed", "rpm": 1000, "api_key": "k2"}
        )
        assert response.status_code == 200
        assert response.json()["reply"] == "fixed:changed"
        assert response.json()["api_key"] == "<redacted>"
        assert (await http.get("/_sim/config")).json()["rpm"] == 1000
        bad = await http.post("/_sim/config", json={"hang": 2})
        assert bad.status_code == 400
        assert "hang must be a probability" in bad.json()["error"]["message"]
        unknown = await http.post("/_sim/config", json={"latency_ms": 5})
        assert "unknown config field(s) latency_ms" in unknown.json()["error"]["message"]
        not_object = await http.post("/_sim/config", content=b"[1]")
        assert "must be a JSON object" in not_object.json()["error"]["message"]
    assert simulator.config.reply == "fixed:changed"
    assert simulator.config.rpm == 1000
    with pytest.raises(anthropic.AuthenticationError):
        await ask(client)
    with pytest.raises(ValueError, match="latency spec"):
        simulator.update_config(latency="soon")


async def test_unknown_path_and_wrong_method(simulator: Simulator) -> None:
    async with httpx2.AsyncClient(base_url=simulator.base_url) as http:
        missing = await http.post("/v1/complete", json={})
        wrong_method = await http.get("/v1/messages?x=1")
        control_wrong_method = await http.post("/_sim/stats")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert control_wrong_method.status_code == 405
    assert simulator.stats()["by_status"] == {"404": 1, "405": 1}


async def test_many_concurrent_requests_overlap(
    simulator: Simulator, client: anthropic.AsyncAnthropic
) -> None:
    simulator.update_config(latency="uniform:0.05,0.1")
    messages = await asyncio.gather(*(ask(client, f"question {i}") for i in range(200)))
    assert [m.content[0].text for m in messages if m.content[0].type == "text"] == [
        f"question {i}" for i in range(200)
    ]
    stats = simulator.stats()
    assert stats["successes"] == 200
    assert stats["peak_in_flight"] >= 150
    assert stats["in_flight"] == 0


async def test_stop_abandons_requests_in_flight(
    client: anthropic.AsyncAnthropic, simulator: Simulator
) -> None:
    simulator.update_config(latency="fixed:60")
    call = asyncio.ensure_future(ask(client))
    await wait_until(lambda: simulator.stats()["in_flight"] == 1)
    await simulator.stop()
    with pytest.raises(anthropic.APIConnectionError):
        await call
    assert simulator.stats()["client_disconnects"] == 1
