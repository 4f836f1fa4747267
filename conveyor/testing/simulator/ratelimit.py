"""Continuously refilling token buckets, the way Anthropic enforces rate limits.

Anthropic does not reset counters at minute boundaries: each limit is a
bucket of ``limit`` tokens that refills at ``limit / 60`` per second. A request
needs one request token and its input tokens up front and reserves
``max_tokens`` output tokens, of which the unused part is refunded once the
reply is known. A rejected request takes nothing from any bucket.

The clock is injectable so bucket arithmetic is testable without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["RateLimiter", "Rejection", "TokenBucket"]

Clock = Callable[[], float]


class TokenBucket:
    """A bucket holding up to ``per_minute`` tokens, refilled continuously.

    A request larger than the whole bucket could never be admitted if it had
    to fit, so instead it is admitted once the bucket is full and drives the
    level negative. Later requests then wait for the debt to refill, which
    keeps the long-run rate at the configured limit.
    """

    __slots__ = ("_level", "_updated", "capacity", "rate")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._level = self.capacity
        self._updated = now

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (negative while in debt)."""
        if now > self._updated:
            self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
            self._updated = now
        return self._level

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` tokens can be taken; 0 if they can be now."""
        missing = min(amount, self.capacity) - self.level(now)
        return max(0.0, missing / self.rate)

    def take(self, amount: float, now: float) -> None:
        self._level = self.level(now) - amount

    def give(self, amount: float, now: float) -> None:
        self._level = min(self.capacity, self.level(now) + amount)

    def seconds_until_full(self, now: float) -> float:
        return (self.capacity - self.level(now)) / self.rate

    def resize(self, per_minute: int, now: float) -> None:
        """Change the limit, keeping the current level (capped at the new capacity)."""
        level = self.level(now)
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._level = min(level, self.capacity)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request was refused and when it is worth retrying."""

    limit: int
    unit: str
    retry_after: int

    @property
    def message(self) -> str:
        return (
            f"This request would exceed the rate limit for your organization of {self.limit} {self.unit} "
            f"per minute. Retry after {self.retry_after} seconds."
        )


@dataclass(frozen=True, slots=True)
class _Limit:
    header: str
    unit: str


_REQUESTS = _Limit("requests", "requests")
_INPUT = _Limit("input-tokens", "input tokens")
_OUTPUT = _Limit("output-tokens", "output tokens")


class RateLimiter:
    """The three optional buckets (requests, input tokens, output tokens)."""

    def __init__(self, rpm: int, itpm: int, otpm: int, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[_Limit, TokenBucket] = {}
        self.reconfigure(rpm, itpm, otpm)

    def reconfigure(self, rpm: int, itpm: int, otpm: int) -> None:
        """Apply new limits live; 0 removes a limit, a new limit starts full."""
        now = self._clock()
        for limit, per_minute in ((_REQUESTS, rpm), (_INPUT, itpm), (_OUTPUT, otpm)):
            bucket = self._buckets.get(limit)
            if not per_minute:
                self._buckets.pop(limit, None)
            elif bucket is None:
                self._buckets[limit] = TokenBucket(per_minute, now)
            else:
                bucket.resize(per_minute, now)

    def try_acquire(self, input_tokens: int, max_tokens: int) -> Rejection | None:
        """Admit a request (taking its tokens) or say which limit refuses it."""
        if not self._buckets:
            return None
        now = self._clock()
        needs = {_REQUESTS: 1, _INPUT: input_tokens, _OUTPUT: max_tokens}
        rejection: Rejection | None = None
        longest_wait = 0.0
        for limit, bucket in self._buckets.items():
            wait = bucket.wait_time(needs[limit], now)
            if wait > longest_wait:
                longest_wait = wait
                rejection = Rejection(int(bucket.capacity), limit.unit, max(1, math.ceil(wait)))
        if rejection is not None:
            return rejection
        for limit, bucket in self._buckets.items():
            bucket.take(needs[limit], now)
        return None

    def refund_output(self, unused: int) -> None:
        """Return reserved output tokens that the reply did not use."""
        bucket = self._buckets.get(_OUTPUT)
        if bucket is not None and unused > 0:
            bucket.give(unused, self._clock())

    def headers(self, wall_time: float | None = None) -> list[tuple[str, str]]:
        """The ``anthropic-ratelimit-*`` headers describing the buckets right now."""
        if not self._buckets:
            return []
        now = self._clock()
        wall = time.time() if wall_time is None else wall_time
        headers: list[tuple[str, str]] = []
        for limit, bucket in self._buckets.items():
            prefix = f"anthropic-ratelimit-{limit.header}"
            full_at = datetime.fromtimestamp(wall + bucket.seconds_until_full(now), UTC)
            headers.append((f"{prefix}-limit", str(int(bucket.capacity))))
            headers.append((f"{prefix}-remaining", str(max(0, math.floor(bucket.level(now))))))
            headers.append((f"{prefix}-reset", full_at.isoformat(timespec="seconds").replace("+00:00", "Z")))
        return headers
