"""Pacing LLM calls to the provider's rate limits, per model, from the response headers.

Anthropic enforces each limit (requests, input tokens and output tokens per minute)
as a continuously refilling token bucket, and reports the bucket on every response
in ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining}``.
The pacer keeps a local copy of each bucket:

* every response resets it to the server's view, which includes what every other
  executor sharing the organisation's limits has spent;
* every call this process starts takes its share from it up front (one request, its
  estimated input tokens, its ``max_tokens`` of output, as the API reserves them);
* it does not refill while this executor has calls in flight: their responses will
  bring the server's level, refilled and spent by everyone, and refilling locally too
  would count the same refill once per executor. With nothing in flight (so no news
  coming) it refills at ``limit / 60`` per second, as the server's does.

A call waits until every bucket holds what it needs plus a small reserve, so the
server's buckets hover just above empty instead of running dry: throughput stays at
the limit and 429s stay rare, however many executors share it. A 429 still holds
every call to that model for ``retry-after`` (and its headers reset the buckets).

Calls wait in arrival order (one queue per model), so pacing keeps the FIFO order the
coordinator dispatched them in. Until the first response for a model nothing is
known and calls go straight through: an executor's first ``--concurrency`` calls are
not paced, so slots beyond what the bucket holds at start-up meet 429s once. A server
that sends no such headers is never paced.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The limits the API reports, as named in its headers.
LIMITS = ("requests", "input-tokens", "output-tokens")
#: Headroom kept in every bucket, as a share of its limit: it absorbs what other
#: executors spend between two of this executor's responses.
DEFAULT_RESERVE = 0.02
#: Longest single sleep while waiting, so a fresher header can shorten the wait;
#: and the shortest, so rounding can never turn the wait into a busy loop.
MAX_SLEEP = 0.25
MIN_SLEEP = 0.001
#: Without a usable ``retry-after``, a 429 holds the model's calls this long.
DEFAULT_RATE_LIMIT_WAIT = 10.0
#: The longest a 429 holds the model's calls, whatever its ``retry-after`` said.
MAX_RATE_LIMIT_HOLD = 300.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


@dataclass(frozen=True)
class Demand:
    """What one call takes from each bucket."""

    input_tokens: int
    output_tokens: int
    requests: int = 1

    def of(self, limit: str) -> float:
        return {
            "requests": self.requests,
            "input-tokens": self.input_tokens,
            "output-tokens": self.output_tokens,
        }[limit]

    @classmethod
    def of_payload(cls, payload: Mapping[str, Any]) -> Demand:
        """Estimate a Messages API call: about 4 characters per input token (the headers
        correct the estimate after every response), and ``max_tokens`` of output."""
        characters = len(str(payload.get("system", "")))
        messages = payload.get("messages") or []
        for message in messages:
            content = message.get("content", "") if isinstance(message, Mapping) else ""
            characters += len(content) if isinstance(content, str) else len(str(content))
        max_tokens = payload.get("max_tokens", 0)
        return cls(
            input_tokens=math.ceil(characters / 4) + 3 * len(messages),
            output_tokens=max_tokens if isinstance(max_tokens, int) else 0,
        )


class _Bucket:
    """The local copy of one server bucket (see the module docstring for when it refills)."""

    __slots__ = ("level", "limit", "updated")

    def __init__(self, limit: float, remaining: float, now: float) -> None:
        self.limit = limit
        self.level = remaining
        self.updated = now

    @property
    def rate(self) -> float:
        return self.limit / 60.0

    def observe(self, limit: float, remaining: float, now: float) -> None:
        self.limit, self.level, self.updated = limit, remaining, now

    def refill(self, now: float, *, refilling: bool) -> None:
        if refilling and now > self.updated:
            self.level = min(self.limit, self.level + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def wait(self, amount: float) -> float:
        """Seconds of refill until ``amount`` can be taken leaving the reserve; a call bigger
        than the whole bucket only waits for a full bucket (it could never fit otherwise)."""
        missing = min(amount + self.limit * DEFAULT_RESERVE, self.limit) - self.level
        return max(0.0, missing / self.rate)


@dataclass
class _Model:
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    held_until: float = 0.0
    #: Calls sent and not yet answered: while there are any, a response will bring news.
    in_flight: int = 0
    queue: asyncio.Lock = field(default_factory=asyncio.Lock)

    def refill(self, now: float) -> None:
        for bucket in self.buckets.values():
            bucket.refill(now, refilling=self.in_flight == 0)


class RateLimitPacer:
    """Per-model pacing; ``follow_headers=False`` keeps only the 429 hold (``--no-pacing``)."""

    def __init__(
        self,
        *,
        follow_headers: bool = True,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.follow_headers = follow_headers
        self._clock = clock
        self._sleep = sleep
        self._models: dict[str, _Model] = {}
        #: Calls that had to wait, and the seconds they waited in all (logged when the executor stops).
        self.paced_calls = 0
        self.paced_seconds = 0.0

    def _model(self, model: str) -> _Model:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _Model()
        return state

    async def acquire(self, model: str, demand: Demand) -> float:
        """Wait until ``demand`` fits the model's limits, take it, and return the seconds waited."""
        state = self._model(model)
        began = self._clock()
        async with state.queue:
            while (delay := self.delay(model, demand)) > 0:
                await self._sleep(max(MIN_SLEEP, min(delay, MAX_SLEEP)))
            self.take(model, demand)
        waited = self._clock() - began
        if waited > 0:
            self.paced_calls += 1
            self.paced_seconds += waited
        return waited

    def delay(self, model: str, demand: Demand) -> float:
        """Seconds until ``demand`` fits the model's limits as known now; 0 if it fits already.

        While calls are in flight this is only an estimate: the next response may say more.
        """
        state = self._model(model)
        now = self._clock()
        state.refill(now)
        delay = state.held_until - now
        for name, bucket in state.buckets.items():
            delay = max(delay, bucket.wait(demand.of(name)))
        return max(delay, 0.0)

    def take(self, model: str, demand: Demand) -> None:
        """Count a call that is about to be sent; :meth:`release` it once it is answered or failed."""
        state = self._model(model)
        state.refill(self._clock())
        for name, bucket in state.buckets.items():
            bucket.level -= demand.of(name)
        state.in_flight += 1

    def release(self, model: str) -> None:
        """A call taken by :meth:`take` is over (answered, refused, or lost)."""
        state = self._model(model)
        state.refill(self._clock())
        state.in_flight = max(0, state.in_flight - 1)

    def observe(self, model: str, headers: Mapping[str, str]) -> None:
        """Take the server's view of the model's buckets from a response's headers."""
        if not self.follow_headers:
            return
        now = self._clock()
        state = self._model(model)
        for name in LIMITS:
            limit = _number(headers.get(f"anthropic-ratelimit-{name}-limit"))
            remaining = _number(headers.get(f"anthropic-ratelimit-{name}-remaining"))
            if limit is None or remaining is None or limit <= 0:
                # Responses report every limit the server enforces: this one was lifted.
                state.buckets.pop(name, None)
                continue
            bucket = state.buckets.get(name)
            if bucket is None:
                state.buckets[name] = _Bucket(limit, remaining, now)
            else:
                bucket.observe(limit, remaining, now)

    def rate_limited(self, model: str, retry_after: float | None, headers: Mapping[str, str]) -> None:
        """A 429: hold the model's calls for ``retry-after`` and believe the headers."""
        state = self._model(model)
        wait = DEFAULT_RATE_LIMIT_WAIT if retry_after is None or math.isnan(retry_after) else retry_after
        wait = min(max(wait, 0.0), MAX_RATE_LIMIT_HOLD)  # an infinite hold would wedge the model for good
        state.held_until = max(state.held_until, self._clock() + wait)
        self.observe(model, headers)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
