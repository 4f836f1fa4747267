"""The retry policy (``coordinator/retries.py``, ``RetryPolicy``): pure decisions, no I/O."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.coordinator.model import ErrorClass
from conveyor.coordinator.retries import (
    DEFAULT_RATE_LIMIT_WAIT,
    MAX_RATE_LIMIT_WAIT,
    RATE_LIMIT_JITTER,
    GiveUp,
    Retry,
    RetryState,
    after_failure,
    after_lost_lease,
)
from conveyor.workflow import RetryPolicy

POLICY = RetryPolicy(
    max_attempts=4, initial_backoff=1.0, multiplier=2.0, max_backoff=5.0, max_rate_limit_waits=3
)


def fail(
    attempt: int,
    error_class: ErrorClass,
    *,
    policy: RetryPolicy = POLICY,
    rate_limit_waits: int = 0,
    retry_after: float | None = None,
    seed: int = 0,
) -> Retry | GiveUp:
    return after_failure(
        RetryState(attempt, policy, rate_limit_waits), error_class, "boom", retry_after, random.Random(seed)
    )


# --- RetryPolicy --------------------------------------------------------------------------------


def test_backoff_grows_exponentially_from_the_initial_delay_up_to_the_cap() -> None:
    assert [POLICY.backoff(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_before_any_failure_is_the_initial_delay() -> None:
    assert POLICY.backoff(0) == 1.0


def test_multiplier_of_one_gives_a_constant_backoff() -> None:
    policy = RetryPolicy(initial_backoff=3.0, multiplier=1.0)
    assert {policy.backoff(n) for n in range(1, 10)} == {3.0}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be 1 to 1000000"),
        ({"max_attempts": 2**63}, "max_attempts must be 1 to 1000000"),
        ({"initial_backoff": -1.0}, "initial_backoff must be 0 to 315360000 seconds"),
        ({"initial_backoff": float("inf")}, "initial_backoff must be 0 to 315360000 seconds"),
        ({"max_backoff": -0.5}, "max_backoff must be 0 to 315360000 seconds"),
        ({"max_backoff": float("nan")}, "max_backoff must be 0 to 315360000 seconds"),
        ({"multiplier": 0.5}, "multiplier must be a finite number of at least 1"),
        ({"multiplier": float("inf")}, "multiplier must be a finite number of at least 1"),
        ({"max_rate_limit_waits": -1}, "max_rate_limit_waits must be 0 to 1000000"),
    ],
)
def test_retry_policy_rejects_invalid_settings(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**fields)


def test_retry_policy_accepts_the_smallest_valid_settings() -> None:
    policy = RetryPolicy(
        max_attempts=1, initial_backoff=0, multiplier=1, max_backoff=0, max_rate_limit_waits=0
    )
    assert policy.backoff(3) == 0


# --- rate limits (429) --------------------------------------------------------------------------


def test_rate_limited_attempt_waits_retry_after_without_spending_an_attempt() -> None:
    decision = fail(2, ErrorClass.RATE_LIMITED, rate_limit_waits=1, retry_after=30.0)

    assert isinstance(decision, Retry)
    assert decision.next_attempt == 2
    assert decision.rate_limit_waits == 2
    assert 30.0 <= decision.delay <= 30.0 * (1 + RATE_LIMIT_JITTER)
    assert "rate limited" in decision.note
    assert "boom" in decision.note


def test_rate_limited_attempt_retries_even_when_no_attempts_are_left() -> None:
    decision = fail(POLICY.max_attempts, ErrorClass.RATE_LIMITED, retry_after=1.0)

    assert isinstance(decision, Retry)
    assert decision.next_attempt == POLICY.max_attempts


def test_rate_limited_attempt_without_retry_after_waits_the_default() -> None:
    decision = fail(1, ErrorClass.RATE_LIMITED, retry_after=None)

    assert isinstance(decision, Retry)
    assert DEFAULT_RATE_LIMIT_WAIT <= decision.delay <= DEFAULT_RATE_LIMIT_WAIT * (1 + RATE_LIMIT_JITTER)


def test_rate_limited_wait_is_capped_however_long_the_api_asks() -> None:
    decision = fail(1, ErrorClass.RATE_LIMITED, retry_after=86_400.0)

    assert isinstance(decision, Retry)
    assert MAX_RATE_LIMIT_WAIT <= decision.delay <= MAX_RATE_LIMIT_WAIT * (1 + RATE_LIMIT_JITTER)


def test_rate_limit_jitter_spreads_retries_of_a_burst() -> None:
    delays = {fail(1, ErrorClass.RATE_LIMITED, retry_after=10.0, seed=seed).delay for seed in range(20)}  # type: ignore[union-attr]

    assert len(delays) > 1


def test_rate_limited_attempt_gives_up_after_max_rate_limit_waits() -> None:
    within = fail(
        1, ErrorClass.RATE_LIMITED, rate_limit_waits=POLICY.max_rate_limit_waits - 1, retry_after=1.0
    )
    beyond = fail(1, ErrorClass.RATE_LIMITED, rate_limit_waits=POLICY.max_rate_limit_waits, retry_after=1.0)

    assert isinstance(within, Retry)
    assert beyond == GiveUp(f"rate limited {POLICY.max_rate_limit_waits + 1} times, giving up: boom")


def test_policy_without_rate_limit_waits_gives_up_on_the_first_429() -> None:
    decision = fail(1, ErrorClass.RATE_LIMITED, policy=RetryPolicy(max_rate_limit_waits=0), retry_after=1.0)

    assert isinstance(decision, GiveUp)


# --- retryable errors (529, 5xx, timeouts) ------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(1, 30),
    initial=st.floats(0.0, 10.0),
    multiplier=st.floats(1.0, 4.0),
    cap=st.floats(0.0, 120.0),
    seed=st.integers(0, 2**32),
)
def test_retryable_failure_backs_off_jittered_within_half_to_full_of_the_capped_delay(
    attempt: int, initial: float, multiplier: float, cap: float, seed: int
) -> None:
    policy = RetryPolicy(
        max_attempts=attempt + 1, initial_backoff=initial, multiplier=multiplier, max_backoff=cap
    )

    decision = fail(attempt, ErrorClass.RETRYABLE, policy=policy, rate_limit_waits=2, seed=seed)

    assert isinstance(decision, Retry)
    unjittered = min(cap, initial * multiplier ** (attempt - 1))
    assert 0.5 * unjittered <= decision.delay <= unjittered
    assert decision.next_attempt == attempt + 1
    assert decision.rate_limit_waits == 2


def test_retryable_failure_note_says_which_attempt_failed_and_why() -> None:
    decision = fail(2, ErrorClass.RETRYABLE)

    assert isinstance(decision, Retry)
    assert decision.note.startswith("attempt 2 failed, retrying in ")
    assert decision.note.endswith(": boom")


def test_retryable_jitter_spreads_steps_that_failed_together() -> None:
    delays = {fail(3, ErrorClass.RETRYABLE, seed=seed).delay for seed in range(20)}  # type: ignore[union-attr]

    assert len(delays) > 1
    assert min(delays) >= 2.0
    assert max(delays) <= 4.0


def test_retryable_failure_gives_up_after_max_attempts_saying_how_many() -> None:
    last_retry = fail(POLICY.max_attempts - 1, ErrorClass.RETRYABLE)
    final = fail(POLICY.max_attempts, ErrorClass.RETRYABLE)

    assert isinstance(last_retry, Retry)
    assert last_retry.next_attempt == POLICY.max_attempts
    assert final == GiveUp(f"failed after {POLICY.max_attempts} attempt(s): boom")


def test_single_attempt_policy_never_retries() -> None:
    assert fail(1, ErrorClass.RETRYABLE, policy=RetryPolicy(max_attempts=1)) == GiveUp(
        "failed after 1 attempt(s): boom"
    )


# --- non-retryable errors (4xx) -----------------------------------------------------------------


def test_non_retryable_failure_gives_up_at_once_with_its_message() -> None:
    assert fail(1, ErrorClass.NON_RETRYABLE) == GiveUp("boom")


# --- lost leases --------------------------------------------------------------------------------


def test_lost_lease_spends_an_attempt_and_retries_immediately() -> None:
    decision = after_lost_lease(RetryState(2, POLICY, 1), "exec-7")

    assert isinstance(decision, Retry)
    assert (decision.delay, decision.next_attempt, decision.rate_limit_waits) == (0.0, 3, 1)
    assert "'exec-7'" in decision.note
    assert "attempt 2" in decision.note


def test_lost_lease_on_the_last_attempt_fails_the_step() -> None:
    decision = after_lost_lease(RetryState(POLICY.max_attempts, POLICY, 0), "exec-7")

    assert isinstance(decision, GiveUp)
    assert decision.error.startswith(f"failed after {POLICY.max_attempts} attempt(s): executor 'exec-7'")
    assert "lease expired" in decision.error
