"""The executor's rate-limit pacer, on a fake clock: exact, and without sleeping.

The last test runs several pacers (several executors) against one server bucket,
the simulator's own :class:`~conveyor.testing.simulator.ratelimit.RateLimiter`, in a small
discrete-event simulation, to show they share a limit without coordinating.
"""

from __future__ import annotations

import asyncio
import heapq
import random

import pytest

from conveyor.executor.pacing import DEFAULT_RESERVE, Demand, RateLimitPacer
from conveyor.testing.simulator.ratelimit import RateLimiter

MODEL = "claude-haiku-4-5"
ONE_CALL = Demand(input_tokens=10, output_tokens=20)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def headers(limit: int, remaining: int, name: str = "requests") -> dict[str, str]:
    return {
        f"anthropic-ratelimit-{name}-limit": str(limit),
        f"anthropic-ratelimit-{name}-remaining": str(remaining),
    }


def pacer_on(clock: FakeClock, **options: bool) -> RateLimitPacer:
    return RateLimitPacer(clock=clock, sleep=clock.sleep, **options)


async def call_and_finish(pacer: RateLimitPacer, model: str = MODEL) -> float:
    """One call that is answered at once (without new headers): returns the seconds it waited."""
    waited = await pacer.acquire(model, ONE_CALL)
    pacer.release(model)
    return waited


async def test_calls_go_straight_through_while_no_limit_is_known() -> None:
    clock = FakeClock()
    pacer = pacer_on(clock)
    for _ in range(1000):
        assert await call_and_finish(pacer) == 0
    assert clock.now == 1000.0


async def test_calls_spend_the_reported_remaining_down_to_the_reserve_then_follow_the_refill() -> None:
    clock = FakeClock()
    pacer = pacer_on(clock)
    pacer.observe(MODEL, headers(limit=600, remaining=100))  # refills 10 requests/s
    reserve = 600 * DEFAULT_RESERVE  # 12
    for _ in range(100 - int(reserve)):
        assert await call_and_finish(pacer) == 0  # 88 calls fit, down to the reserve
    for _ in range(50):
        await call_and_finish(pacer)
    assert clock.now - 1000.0 == pytest.approx(50 / 10, abs=0.01)  # then exactly the refill rate


async def test_no_local_refill_while_calls_are_in_flight_their_responses_bring_the_level() -> None:
    """With calls in flight, refilling locally would count the refill that other executors
    also see as this executor's own; the next response says what is really left."""
    clock = FakeClock()
    pacer = pacer_on(clock)
    pacer.observe(MODEL, headers(limit=600, remaining=13))
    await pacer.acquire(MODEL, ONE_CALL)  # in flight now; 12 left = the reserve
    clock.now += 5.0  # 50 requests' worth of refill, which other executors may have spent
    assert pacer.delay(MODEL, ONE_CALL) > 0
    pacer.observe(MODEL, headers(limit=600, remaining=13))  # the response: 13 are left
    pacer.release(MODEL)
    assert pacer.delay(MODEL, ONE_CALL) == 0
    await call_and_finish(pacer)
    assert pacer.delay(MODEL, ONE_CALL) > 0


async def test_the_tightest_of_the_three_limits_sets_the_pace() -> None:
    clock = FakeClock()
    pacer = pacer_on(clock)
    # Requests refill 100/s and input tokens 10,000/s, but output tokens only 100/s:
    # 5 calls/s of 20 tokens each, after refilling the reserve of 120 tokens.
    pacer.observe(
        MODEL,
        headers(6000, 6000) | headers(600_000, 600_000, "input-tokens") | headers(6000, 0, "output-tokens"),
    )
    for _ in range(20):
        await call_and_finish(pacer)
    assert clock.now - 1000.0 == pytest.approx((20 * 20 + 6000 * DEFAULT_RESERVE) / 100, abs=0.01)


async def test_a_limit_the_responses_stop_reporting_is_forgotten() -> None:
    """Found by the chaos suite: after a rate limit was lifted, executors kept pacing to it."""
    clock = FakeClock()
    pacer = pacer_on(clock)
    pacer.observe(MODEL, headers(limit=60, remaining=0))
    assert pacer.delay(MODEL, ONE_CALL) > 0
    pacer.observe(MODEL, {})  # the server no longer reports (so no longer enforces) the limit
    for _ in range(100):
        assert await call_and_finish(pacer) == 0
    assert clock.now == 1000.0


async def test_a_429_holds_every_call_to_the_model_for_retry_after() -> None:
    clock = FakeClock()
    pacer = pacer_on(clock)
    pacer.rate_limited(MODEL, 3.0, {})
    assert await call_and_finish(pacer) == pytest.approx(3.0, abs=0.01)
    assert await call_and_finish(pacer, "another-model") == 0


async def test_without_pacing_headers_are_ignored_but_a_429_still_holds_calls() -> None:
    clock = FakeClock()
    pacer = pacer_on(clock, follow_headers=False)
    pacer.observe(MODEL, headers(limit=60, remaining=0))
    assert await call_and_finish(pacer) == 0
    pacer.rate_limited(MODEL, None, headers(limit=60, remaining=0))
    assert await call_and_finish(pacer) == pytest.approx(10.0, abs=0.01)  # the default hold


async def test_waiting_calls_go_in_the_order_they_arrived() -> None:
    clock = FakeClock()
    pacer = pacer_on(clock)
    pacer.observe(MODEL, headers(limit=60, remaining=0))
    order: list[int] = []

    async def call(n: int) -> None:
        await call_and_finish(pacer)
        order.append(n)

    await asyncio.gather(*(call(n) for n in range(10)))
    assert order == list(range(10))


def test_a_calls_demand_is_estimated_from_its_payload() -> None:
    payload = {
        "model": MODEL,
        "max_tokens": 64,
        "system": "x" * 40,
        "messages": [{"role": "user", "content": "y" * 400}, {"role": "assistant", "content": "z" * 3}],
    }
    assert Demand.of_payload(payload) == Demand(input_tokens=111 + 6, output_tokens=64)


@pytest.mark.parametrize(("executors", "slots"), [(1, 100), (4, 100), (8, 50)])
def test_several_executors_sharing_one_limit_run_at_it_with_no_429s(executors: int, slots: int) -> None:
    """Executors with 0.5-1.5 s calls against a 600 requests/min limit that starts full:
    after the first burst they together sustain the limit, and none of their calls is
    refused, though none knows the others exist. (Each call is sent and answered in
    event order; the server bucket is the simulator's own.)"""
    clock = FakeClock()
    server = RateLimiter(rpm=600, itpm=0, otpm=0, clock=clock)
    pacers = [RateLimitPacer(clock=clock) for _ in range(executors)]
    free = [slots] * executors
    latency = random.Random(7)
    answers: list[tuple[float, int, bool]] = []  # (answer time, executor, admitted)
    admitted_at: list[float] = []
    refused = 0

    def send(executor: int) -> None:
        nonlocal refused
        pacer = pacers[executor]
        while free[executor] and pacer.delay(MODEL, ONE_CALL) == 0:
            pacer.take(MODEL, ONE_CALL)
            free[executor] -= 1
            admitted = server.try_acquire(input_tokens=10, max_tokens=20) is None
            if admitted:
                admitted_at.append(clock.now)
            else:
                refused += 1
            answer_at = clock.now + (latency.uniform(0.5, 1.5) if admitted else 0.001)
            heapq.heappush(answers, (answer_at, executor, admitted))

    start, duration = clock.now, 300.0
    tick = start
    while tick < start + duration:
        tick += 0.01
        while answers and answers[0][0] <= tick:
            clock.now, executor, admitted = heapq.heappop(answers)
            reported = dict(server.headers())
            if admitted:
                pacers[executor].observe(MODEL, reported)
            else:
                pacers[executor].rate_limited(MODEL, 1.0, reported)
            pacers[executor].release(MODEL)
            free[executor] += 1
            send(executor)
        clock.now = tick
        for executor in range(executors):
            send(executor)

    steady = [t for t in admitted_at if t >= start + 120]  # after the full bucket is spent
    assert len(steady) / (duration - 120) >= 0.95 * 600 / 60
    assert refused == 0
