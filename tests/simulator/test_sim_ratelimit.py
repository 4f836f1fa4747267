"""Token-bucket rate limiting, driven by a fake clock (no sleeping, no timing flakiness)."""

from __future__ import annotations

from datetime import datetime

import pytest

from conveyor.testing.simulator.ratelimit import RateLimiter, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def headers_of(limiter: RateLimiter, wall_time: float = 0.0) -> dict[str, str]:
    return dict(limiter.headers(wall_time))


def test_bucket_refills_continuously_up_to_capacity() -> None:
    bucket = TokenBucket(60, now=0.0)
    bucket.take(60, now=0.0)
    assert bucket.level(0.5) == pytest.approx(0.5)
    assert bucket.level(10.0) == pytest.approx(10.0)
    assert bucket.level(1000.0) == 60


def test_bucket_wait_time_and_oversized_requests() -> None:
    bucket = TokenBucket(60, now=0.0)
    bucket.take(55, now=0.0)
    assert bucket.wait_time(5, now=0.0) == 0
    assert bucket.wait_time(8, now=0.0) == pytest.approx(3.0)
    # Larger than the whole bucket: waits only for a full bucket, then runs into debt.
    assert bucket.wait_time(100, now=0.0) == pytest.approx(55.0)
    bucket.take(100, now=55.0)
    assert bucket.level(55.0) == pytest.approx(-40.0)


def test_limiter_without_limits_admits_everything_and_sends_no_headers() -> None:
    limiter = RateLimiter(0, 0, 0)
    assert all(limiter.try_acquire(10**9, 10**9) is None for _ in range(100))
    assert limiter.headers() == []


def test_requests_per_minute() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=2, itpm=0, otpm=0, clock=clock)
    assert limiter.try_acquire(10, 10) is None
    assert limiter.try_acquire(10, 10) is None
    rejection = limiter.try_acquire(10, 10)
    assert rejection is not None
    assert (rejection.limit, rejection.unit, rejection.retry_after) == (2, "requests", 30)
    assert "rate limit for your organization of 2 requests per minute" in rejection.message
    clock.now += 30
    assert limiter.try_acquire(10, 10) is None


def test_rejection_consumes_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=10, itpm=100, otpm=1000, clock=clock)
    assert limiter.try_acquire(input_tokens=90, max_tokens=100) is None
    rejection = limiter.try_acquire(input_tokens=20, max_tokens=100)
    assert rejection is not None
    assert rejection.unit == "input tokens"
    assert rejection.retry_after == 6  # 10 missing tokens at 100/60 per second
    headers = headers_of(limiter)
    assert headers["anthropic-ratelimit-requests-remaining"] == "9"
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "10"
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "900"


def test_retry_after_is_the_longest_wait_and_at_least_one_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, itpm=0, otpm=60, clock=clock)
    assert limiter.try_acquire(1, 60) is None
    clock.now += 0.01
    rejection = limiter.try_acquire(1, 30)
    assert rejection is not None
    assert (rejection.unit, rejection.retry_after) == ("output tokens", 30)
    limiter = RateLimiter(rpm=6000, itpm=0, otpm=0, clock=clock)
    for _ in range(6000):
        assert limiter.try_acquire(1, 1) is None
    rejection = limiter.try_acquire(1, 1)
    assert rejection is not None
    assert rejection.retry_after == 1  # 10 ms away, but never advertised as 0


def test_unused_output_tokens_are_refunded_up_to_capacity() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=0, itpm=0, otpm=100, clock=clock)
    assert limiter.try_acquire(1, 80) is None
    assert limiter.try_acquire(1, 80) is not None
    limiter.refund_output(70)
    assert headers_of(limiter)["anthropic-ratelimit-output-tokens-remaining"] == "90"
    limiter.refund_output(500)
    assert headers_of(limiter)["anthropic-ratelimit-output-tokens-remaining"] == "100"


def test_headers_report_limit_remaining_and_when_full() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, itpm=600, otpm=0, clock=clock)
    assert limiter.try_acquire(input_tokens=300, max_tokens=5) is None
    headers = headers_of(limiter, wall_time=1_700_000_000.0)
    assert headers["anthropic-ratelimit-requests-limit"] == "60"
    assert headers["anthropic-ratelimit-requests-remaining"] == "59"
    assert headers["anthropic-ratelimit-requests-reset"] == "2023-11-14T22:13:21Z"  # 1 s to refill
    assert headers["anthropic-ratelimit-input-tokens-limit"] == "600"
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "300"
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-input-tokens-reset"])
    assert reset.timestamp() == 1_700_000_000 + 30
    assert not any(name.startswith("anthropic-ratelimit-output-tokens") for name in headers)


def test_reconfigure_keeps_levels_adds_and_removes_limits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=10, itpm=0, otpm=0, clock=clock)
    for _ in range(4):
        assert limiter.try_acquire(1, 1) is None
    limiter.reconfigure(rpm=5, itpm=50, otpm=0)
    headers = headers_of(limiter)
    assert headers["anthropic-ratelimit-requests-remaining"] == "5"  # 6 left, capped at the new limit
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "50"  # a new limit starts full
    limiter.reconfigure(rpm=0, itpm=0, otpm=0)
    assert limiter.headers() == []
