"""Request validation, token estimates and deterministic replies (pure functions)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conveyor.testing.simulator.messages import (
    InvalidRequest,
    estimate_input_tokens,
    make_reply,
    parse_messages_request,
)


def body(**fields: Any) -> bytes:
    request: dict[str, Any] = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }
    request.update(fields)
    return json.dumps({key: value for key, value in request.items() if value is not ...}).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "The request body is not valid JSON"),
        (b"[1, 2]", "The request body must be a JSON object"),
        (body(model=...), "model: Field required"),
        (body(model=""), "model: String should have at least 1 character"),
        (body(model=5), "model: Input should be a valid string"),
        (body(max_tokens=...), "max_tokens: Field required"),
        (body(max_tokens="10"), "max_tokens: Input should be a valid integer"),
        (body(max_tokens=True), "max_tokens: Input should be a valid integer"),
        (body(max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
        (body(messages=...), "messages: Field required"),
        (body(messages={}), "messages: Input should be a valid list"),
        (body(messages=[]), "messages: At least one message is required"),
        (body(messages=["hi"]), "messages.0: Input should be a valid dictionary"),
        (body(messages=[{"content": "x"}]), "messages.0.role: Field required"),
        (body(messages=[{"role": "system", "content": "x"}]), "messages.0.role: Input should be 'user' or"),
        (body(messages=[{"role": "user"}]), "messages.0.content: Field required"),
        (
            body(messages=[{"role": "user", "content": 3}]),
            "messages.0.content: Input should be a valid string",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
            "messages.0.content.0.type: The simulator supports only 'text' content blocks, got 'image'",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
            "messages.0.content.0.text: Field required",
        ),
        (body(system=7), "system: Input should be a valid string or a list of text blocks"),
        (body(stream=True), "stream: Streaming is not supported"),
    ],
)
def test_invalid_requests_name_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        parse_messages_request(raw)
    assert str(excinfo.value).startswith(message)


def test_parses_text_blocks_and_system() -> None:
    request = parse_messages_request(
        body(
            system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}],
                },
                {"role": "assistant", "content": "ok"},
            ],
        )
    )
    assert request.system_text == "Be brief."
    assert request.messages == (("user", "one two"), ("assistant", "ok"))


def test_input_tokens_count_characters_and_messages() -> None:
    request = parse_messages_request(
        body(
            system="x" * 10,
            messages=[{"role": "user", "content": "y" * 7}, {"role": "assistant", "content": "z"}],
        )
    )
    assert estimate_input_tokens(request) == 5 + 3 * 2  # ceil(18 / 4) + 3 per message


def test_echo_replies_with_the_last_user_message() -> None:
    request = parse_messages_request(
        body(
            messages=[
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "answer"},
                {"role": "user", "content": "second question"},
                {"role": "assistant", "content": "prefill"},
            ]
        )
    )
    reply = make_reply(request, fixed_text=None)
    assert (reply.text, reply.stop_reason, reply.output_tokens) == ("second question", "end_turn", 4)


def test_echo_without_a_user_message_is_empty_but_costs_a_token() -> None:
    reply = make_reply(parse_messages_request(body(messages=[{"role": "assistant", "content": "x"}])), None)
    assert (reply.text, reply.output_tokens) == ("", 1)


@pytest.mark.parametrize(
    ("length", "stop_reason"), [(39, "end_turn"), (40, "end_turn"), (41, "max_tokens"), (500, "max_tokens")]
)
def test_reply_is_cut_at_four_characters_per_token(length: int, stop_reason: str) -> None:
    request = parse_messages_request(
        body(max_tokens=10, messages=[{"role": "user", "content": "a" * length}])
    )
    reply = make_reply(request, fixed_text=None)
    assert reply.text == "a" * min(length, 40)
    assert reply.stop_reason == stop_reason
    assert reply.output_tokens == min(10, -(-length // 4))


def test_fixed_reply_ignores_the_prompt_and_is_cut_too() -> None:
    request = parse_messages_request(body(max_tokens=1))
    assert make_reply(request, fixed_text="pong").text == "pong"
    reply = make_reply(request, fixed_text="pong pong")
    assert (reply.text, reply.stop_reason) == ("pong", "max_tokens")
