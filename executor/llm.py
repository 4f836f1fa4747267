"""LLM tasks: one Anthropic Messages API call each, through the official SDK.

The SDK's own retries are off (``max_retries=0``): the queue owns retries, so every
attempt is visible and counted. This module only *classifies* what happened:

* 429 → rate limited: retry after ``retry-after`` without spending an attempt;
* 529, 5xx, 408, 409, timeouts, connection errors → transient: back off, spend an attempt;
* any other 4xx → permanent: fail the step with the API's message.

Before each call the :class:`~conveyor.executor.pacing.RateLimitPacer` waits until the
model's rate limits (learnt from the ``anthropic-ratelimit-*`` headers of earlier
responses) have room for it, so a busy executor runs at the limit rather than into
it. A 429 holds the executor's other calls to that model until ``retry-after`` passes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import anthropic

from conveyor.v1.common_pb2 import (
    ERROR_CLASS_NON_RETRYABLE,
    ERROR_CLASS_RATE_LIMITED,
    ERROR_CLASS_RETRYABLE,
    ErrorClass,
)

from .pacing import Demand, RateLimitPacer

log = logging.getLogger(__name__)

#: Statuses the API documents as transient besides 5xx.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 409})
#: The longest ``retry-after`` believed: a larger (or infinite) one holds the
#: model's calls this long, and the coordinator clamps its retry to the same.
MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class CallOutcome:
    """The outcome of one attempt: ``result_json`` on success, else a classified error."""

    result_json: str | None = None
    error_class: ErrorClass | None = None
    message: str = ""
    retry_after: float | None = None


class LlmCaller:
    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        use_aiohttp: bool = True,
        pacer: RateLimitPacer | None = None,
    ) -> None:
        # The aiohttp transport sustains ~1.6x the calls/s of the default httpx one
        # at high concurrency on one core (see the brief's measurements).
        http_client = anthropic.DefaultAioHttpClient() if use_aiohttp else None
        self._client = anthropic.AsyncAnthropic(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout, http_client=http_client
        )
        self.pacer = pacer or RateLimitPacer()

    async def close(self) -> None:
        if self.pacer.paced_calls:
            log.info(
                "%d LLM call(s) waited for rate-limit room, %.1fs in all",
                self.pacer.paced_calls,
                self.pacer.paced_seconds,
            )
        await self._client.close()

    async def call(self, payload_json: str, timeout: float | None = None) -> CallOutcome:
        try:
            payload = json.loads(payload_json)
        except (json.JSONDecodeError, RecursionError) as error:
            return CallOutcome(
                error_class=ERROR_CLASS_NON_RETRYABLE, message=f"LLM payload is not JSON: {error}"
            )
        if not isinstance(payload, dict):
            return CallOutcome(
                error_class=ERROR_CLASS_NON_RETRYABLE,
                message="LLM payload must be a JSON object of Messages API arguments, "
                f"not {type(payload).__name__}",
            )
        model = str(payload.get("model", ""))
        try:
            demand = Demand.of_payload(payload)
        except (TypeError, ValueError, AttributeError):  # odd shapes: the API will judge them
            demand = Demand(input_tokens=0, output_tokens=0)
        await self.pacer.acquire(model, demand)
        try:
            return await self._call(model, payload, timeout)
        finally:
            self.pacer.release(model)

    async def _call(self, model: str, payload: dict[str, Any], timeout: float | None) -> CallOutcome:
        options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = await self._client.messages.with_raw_response.create(**payload, **options)
            self.pacer.observe(model, response.headers)
            return CallOutcome(result_json=await response.text())
        except anthropic.RateLimitError as error:
            wait = _retry_after(error.response.headers)
            self.pacer.rate_limited(model, wait, error.response.headers)
            return CallOutcome(
                error_class=ERROR_CLASS_RATE_LIMITED, message=_status_message(error), retry_after=wait
            )
        except anthropic.APIStatusError as error:
            self.pacer.observe(model, error.response.headers)
            transient = error.status_code >= 500 or error.status_code in RETRYABLE_CLIENT_STATUSES
            return CallOutcome(
                error_class=ERROR_CLASS_RETRYABLE if transient else ERROR_CLASS_NON_RETRYABLE,
                message=_status_message(error),
            )
        except anthropic.APITimeoutError:
            return CallOutcome(error_class=ERROR_CLASS_RETRYABLE, message="the API call timed out")
        except anthropic.APIConnectionError as error:
            cause = error.__cause__ or error
            return CallOutcome(
                error_class=ERROR_CLASS_RETRYABLE, message=f"connection error: {cause!r}"[:500]
            )
        except TypeError as error:  # create() rejected the arguments themselves
            return CallOutcome(
                error_class=ERROR_CLASS_NON_RETRYABLE, message=f"invalid Messages API arguments: {error}"
            )


def _status_message(error: anthropic.APIStatusError) -> str:
    kind = error.type or "error"
    detail = error.api_message or error.message
    return f"HTTP {error.status_code} {kind}: {detail}"[:2000]


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds form).

    Parsed defensively and bounded: an unparsable, negative or NaN value is ignored
    (the default wait applies), an infinite or huge one is held to :data:`MAX_RETRY_AFTER`.
    """
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except (TypeError, ValueError, OverflowError):
            continue
        if math.isnan(seconds) or seconds < 0:
            continue
        return min(seconds, MAX_RETRY_AFTER)
    return None
