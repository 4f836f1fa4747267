"""The Messages API itself: request validation, deterministic replies, token estimates.

Everything here is a pure function of the request so tests can predict the
exact reply. Error messages follow the real API's ``<field path>: <problem>``
style (e.g. ``max_tokens: Field required``) so client code that surfaces them
reads the same against the simulator as against Anthropic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "InvalidRequest",
    "MessagesRequest",
    "Reply",
    "Responder",
    "estimate_input_tokens",
    "make_reply",
    "message_body",
    "parse_messages_request",
]

_ROLES = ("user", "assistant")
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 3


class InvalidRequest(ValueError):
    """The request breaks the API contract; the message is shown to the client."""


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """The parts of a validated request that the simulator uses."""

    model: str
    max_tokens: int
    system_text: str
    #: Text of each message, concatenated per message, with its role.
    messages: tuple[tuple[str, str], ...]
    #: The decoded request body, kept to recognise repeated requests.
    body: dict[str, Any]

    @property
    def prompt(self) -> str:
        """The text of the last user message: what ``echo`` answers with."""
        return next((text for role, text in reversed(self.messages) if role == "user"), "")


#: Chooses the reply text for a request (tests script the LLM with one); ``None`` falls
#: back to the configured ``reply`` (echo or fixed text).
Responder = Callable[[MessagesRequest], "str | None"]


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    stop_reason: str
    output_tokens: int


def parse_messages_request(raw: bytes) -> MessagesRequest:
    """Decode and validate a ``POST /v1/messages`` body."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    if body.get("stream"):
        raise InvalidRequest("stream: Streaming is not supported by the simulator; omit it or pass false")
    model = _required(body, "model")
    if not isinstance(model, str):
        raise InvalidRequest("model: Input should be a valid string")
    if not model:
        raise InvalidRequest("model: String should have at least 1 character")
    max_tokens = _required(body, "max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise InvalidRequest("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be greater than or equal to 1")
    messages = _required(body, "messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: Input should be a valid list")
    if not messages:
        raise InvalidRequest("messages: At least one message is required")
    return MessagesRequest(
        model=model,
        max_tokens=max_tokens,
        system_text=_system_text(body.get("system")),
        messages=tuple(_message(index, message) for index, message in enumerate(messages)),
        body=body,
    )


def estimate_input_tokens(request: MessagesRequest) -> int:
    """About four characters per token plus a small per-message overhead."""
    chars = len(request.system_text) + sum(len(text) for _, text in request.messages)
    return max(1, math.ceil(chars / _CHARS_PER_TOKEN) + _TOKENS_PER_MESSAGE * len(request.messages))


def make_reply(request: MessagesRequest, fixed_text: str | None) -> Reply:
    """Echo the last user message (or use ``fixed_text``), cut to ``max_tokens``."""
    if fixed_text is None:
        fixed_text = request.prompt
    limit = request.max_tokens * _CHARS_PER_TOKEN
    truncated = len(fixed_text) > limit
    text = fixed_text[:limit] if truncated else fixed_text
    return Reply(
        text=text,
        stop_reason="max_tokens" if truncated else "end_turn",
        output_tokens=max(1, math.ceil(len(text) / _CHARS_PER_TOKEN)),
    )


def message_body(message_id: str, request: MessagesRequest, reply: Reply, input_tokens: int) -> bytes:
    """Serialise a ``Message`` object exactly as the API returns it."""
    return json.dumps(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": reply.output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        },
        separators=(",", ":"),
    ).encode()


def _required(body: dict[str, Any], field: str) -> Any:
    if field not in body:
        raise InvalidRequest(f"{field}: Field required")
    return body[field]


def _system_text(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if isinstance(system, list):
        return _blocks_text("system", system)
    raise InvalidRequest("system: Input should be a valid string or a list of text blocks")


def _message(index: int, message: Any) -> tuple[str, str]:
    where = f"messages.{index}"
    if not isinstance(message, dict):
        raise InvalidRequest(f"{where}: Input should be a valid dictionary")
    role = _required_in(message, where, "role")
    if role not in _ROLES:
        raise InvalidRequest(f"{where}.role: Input should be 'user' or 'assistant'")
    content = _required_in(message, where, "content")
    if isinstance(content, str):
        return role, content
    if isinstance(content, list):
        return role, _blocks_text(f"{where}.content", content)
    raise InvalidRequest(f"{where}.content: Input should be a valid string or a list of content blocks")


def _required_in(container: dict[str, Any], where: str, field: str) -> Any:
    if field not in container:
        raise InvalidRequest(f"{where}.{field}: Field required")
    return container[field]


def _blocks_text(where: str, blocks: list[Any]) -> str:
    parts: list[str] = []
    for index, block in enumerate(blocks):
        block_where = f"{where}.{index}"
        if not isinstance(block, dict):
            raise InvalidRequest(f"{block_where}: Input should be a valid dictionary")
        if block.get("type") != "text":
            raise InvalidRequest(
                f"{block_where}.type: The simulator supports only 'text' content blocks, "
                f"got {block.get('type')!r}"
            )
        text = _required_in(block, block_where, "text")
        if not isinstance(text, str):
            raise InvalidRequest(f"{block_where}.text: Input should be a valid string")
        parts.append(text)
    return "".join(parts)
