"""The one backoff helper (``conveyor/backoff.py``): bounds, growth, jitter, deadline."""

from __future__ import annotations

import random
import statistics

import pytest

from conveyor.backoff import Backoff, BackoffPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def draws(backoff: Backoff, count: int) -> list[float]:
    delays = []
    for _ in range(count):
        delay = backoff.next_delay()
        assert delay is not None
        delays.append(delay)
    return delays


def test_the_ceiling_doubles_from_initial_and_stops_at_the_maximum() -> None:
    policy = BackoffPolicy(initial=0.1, maximum=5.0)
    assert [round(policy.ceiling(n), 6) for n in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert policy.ceiling(10_000) == 5.0  # a long outage neither overflows nor takes long


def test_every_delay_lies_within_its_ceiling_and_the_jittered_share() -> None:
    policy = BackoffPolicy(initial=0.05, maximum=2.0, jitter=0.5)
    backoff = Backoff(policy, rng=random.Random(7))
    for attempt, delay in enumerate(draws(backoff, 200)):
        ceiling = policy.ceiling(attempt)
        assert ceiling / 2 <= delay <= ceiling


def test_full_jitter_draws_from_zero_to_the_ceiling() -> None:
    policy = BackoffPolicy(initial=1.0, maximum=1.0)
    delays = draws(Backoff(policy, rng=random.Random(3)), 2000)
    assert all(0.0 <= d <= 1.0 for d in delays)
    # Spread over the whole range, not bunched: the draws cover both ends and average near half.
    assert min(delays) < 0.05 and max(delays) > 0.95
    assert 0.45 < statistics.fmean(delays) < 0.55


def test_no_jitter_is_the_plain_exponential_sequence() -> None:
    backoff = Backoff(BackoffPolicy(initial=0.1, maximum=1.0, jitter=0.0))
    assert [round(d, 6) for d in draws(backoff, 6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_delays_grow_with_the_attempts() -> None:
    policy = BackoffPolicy(initial=0.1, maximum=100.0)
    means = []
    for attempt in range(5):
        samples = []
        for seed in range(300):
            backoff = Backoff(policy, rng=random.Random(seed))
            samples.append(draws(backoff, attempt + 1)[-1])
        means.append(statistics.fmean(samples))
    assert means == sorted(means)
    assert means[-1] > 8 * means[0]


def test_two_loops_with_the_same_policy_do_not_move_in_lockstep() -> None:
    """What the jitter is for: executors cut off at the same moment come back at different times."""
    policy = BackoffPolicy(initial=0.1, maximum=5.0)
    sequences = [tuple(draws(Backoff(policy, rng=random.Random(seed)), 5)) for seed in range(20)]
    assert len(set(sequences)) == 20
    assert len({sequence[0] for sequence in sequences}) == 20


def test_the_same_seed_gives_the_same_delays() -> None:
    policy = BackoffPolicy(initial=0.1, maximum=5.0)
    assert draws(Backoff(policy, rng=random.Random(1)), 10) == draws(
        Backoff(policy, rng=random.Random(1)), 10
    )


def test_reset_starts_again_from_the_first_delay() -> None:
    backoff = Backoff(BackoffPolicy(initial=0.1, maximum=5.0, jitter=0.0))
    draws(backoff, 5)
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)


def test_the_last_wait_ends_at_the_deadline_and_none_follows() -> None:
    clock = FakeClock()
    backoff = Backoff(BackoffPolicy(initial=1.0, maximum=1.0, jitter=0.0), deadline=2.5, clock=clock)
    assert backoff.next_delay() == 1.0
    clock.now += 1.0
    assert backoff.next_delay() == 1.0
    clock.now += 1.0
    assert backoff.next_delay() == pytest.approx(0.5)  # cut short: the last try is at the deadline
    clock.now += 0.5
    assert backoff.next_delay() is None
    backoff.reset()  # a success gives a fresh deadline
    assert backoff.next_delay() == 1.0


def test_a_zero_deadline_gives_up_at_once() -> None:
    assert Backoff(BackoffPolicy(initial=0.1, maximum=1.0), deadline=0.0).next_delay() is None


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ({"initial": 0.0, "maximum": 1.0}, "0 < initial <= maximum"),
        ({"initial": 2.0, "maximum": 1.0}, "0 < initial <= maximum"),
        ({"initial": 0.1, "maximum": 1.0, "multiplier": 0.5}, "multiplier must be >= 1"),
        ({"initial": 0.1, "maximum": 1.0, "jitter": 1.5}, "jitter must be between 0 and 1"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(arguments: dict[str, float], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        BackoffPolicy(**arguments)
