"""What happens after an attempt fails: retry later, or fail the step for good.

The queue owns retries (not the executor, not the SDK), so every attempt is a
visible event with a recorded error. This module is the policy, free of I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from conveyor.workflow import RetryPolicy

from .model import ErrorClass

#: Without a ``retry-after`` header a rate-limited attempt waits this long.
DEFAULT_RATE_LIMIT_WAIT = 10.0
#: Spread rate-limited retries over a little extra time, so a burst of 429s does
#: not come back as one burst.
RATE_LIMIT_JITTER = 0.2
#: However long an API asks us to wait, look again after this.
MAX_RATE_LIMIT_WAIT = 300.0
#: How the note of a retry after a rate-limited attempt starts (``Retry.note``).
RATE_LIMITED_NOTE = "rate limited"


@dataclass(frozen=True)
class RetryState:
    """The retry-relevant columns of a task row."""

    attempt: int
    policy: RetryPolicy
    rate_limit_waits: int


@dataclass(frozen=True)
class Retry:
    delay: float
    next_attempt: int
    rate_limit_waits: int
    note: str


@dataclass(frozen=True)
class GiveUp:
    error: str


def after_failure(
    state: RetryState,
    error_class: ErrorClass,
    message: str,
    retry_after: float | None,
    rng: random.Random,
) -> Retry | GiveUp:
    """Decide the fate of a task whose attempt ``state.attempt`` failed."""
    policy = state.policy
    if error_class is ErrorClass.NON_RETRYABLE:
        return GiveUp(message)
    if error_class is ErrorClass.RATE_LIMITED:
        if state.rate_limit_waits >= policy.max_rate_limit_waits:
            return GiveUp(f"rate limited {state.rate_limit_waits + 1} times, giving up: {message}")
        wait = rate_limit_wait(retry_after)
        wait += rng.uniform(0, RATE_LIMIT_JITTER * wait)
        return Retry(
            wait,
            state.attempt,
            state.rate_limit_waits + 1,
            f"{RATE_LIMITED_NOTE}, retrying in {wait:.1f}s: {message}",
        )
    if state.attempt >= policy.max_attempts:
        return GiveUp(f"failed after {state.attempt} attempt(s): {message}")
    delay = policy.backoff(state.attempt) * rng.uniform(0.5, 1.0)
    return Retry(
        delay,
        state.attempt + 1,
        state.rate_limit_waits,
        f"attempt {state.attempt} failed, retrying in {delay:.1f}s: {message}",
    )


def rate_limit_wait(retry_after: float | None) -> float:
    """How long to wait after a rate-limited attempt: what the API asked, clamped at both ends (a
    wait in the past means now; a wait past the maximum, or no number at all, is looked at again
    after the maximum or the default) so the time of the retry is always one the database holds."""
    if retry_after is None:
        return DEFAULT_RATE_LIMIT_WAIT
    if math.isnan(retry_after):
        return MAX_RATE_LIMIT_WAIT
    return min(max(retry_after, 0.0), MAX_RATE_LIMIT_WAIT)


def after_lost_lease(
    state: RetryState, executor_id: str, cause: str = "stopped heartbeating", detail: str = "lease expired"
) -> Retry | GiveUp:
    """The executor running the task vanished: the attempt counts, the retry is immediate.

    Counting it is what stops a task that crashes its executor from crashing every
    executor in turn; retrying at once keeps the task's place at the FIFO head.
    """
    message = f"executor {executor_id!r} {cause} during attempt {state.attempt} ({detail})"
    if state.attempt >= state.policy.max_attempts:
        return GiveUp(f"failed after {state.attempt} attempt(s): {message}")
    return Retry(0.0, state.attempt + 1, state.rate_limit_waits, message)


def is_rate_limit_note(note: str) -> bool:
    """Whether a retry note (a task's ``last_error``) is about a rate-limited attempt."""
    return note.startswith(RATE_LIMITED_NOTE + ",")


def attempt_error(note: str) -> str:
    """The failed attempt's own message inside a retry note; the note itself if it has none."""
    headline, separator, message = note.partition(": ")
    return message if separator and ", retrying in " in headline else note
