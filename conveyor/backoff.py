"""How long to wait before trying again: exponential growth, a cap, full jitter, an optional deadline.

Every retry loop in Conveyor (an executor reconnecting, results being reported, a database
read or write retried, a coordinator waiting for the exclusive lock, a client polling) draws
its delays here. The jitter is the point: without it every executor that lost its stream
when the coordinator restarted would reconnect at the same instants (0.1 s, 0.2 s, 0.4 s,
...), in lockstep, and hit the new coordinator as one wave each time.

Full jitter (see "Exponential Backoff And Jitter", AWS Architecture Blog): the n-th delay
is drawn uniformly from ``[ceiling_n * (1 - jitter), ceiling_n]`` where
``ceiling_n = min(maximum, initial * multiplier ** n)``; ``jitter=1`` (the default) draws
from ``[0, ceiling_n]``, ``jitter=0`` gives the plain exponential sequence.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    """The shape of a backoff: where it starts, how fast it grows, where it stops, how it spreads."""

    #: The ceiling of the first delay, in seconds.
    initial: float
    #: The ceiling never grows past this.
    maximum: float
    #: Each attempt multiplies the ceiling by this.
    multiplier: float = 2.0
    #: The fraction of the ceiling that is random: 1 draws from [0, ceiling], 0 not at all.
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(
                f"a backoff needs 0 < initial <= maximum, not initial={self.initial}, maximum={self.maximum}"
            )
        if self.multiplier < 1:
            raise ValueError(f"a backoff's multiplier must be >= 1, not {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"a backoff's jitter must be between 0 and 1, not {self.jitter}")

    def ceiling(self, attempt: int) -> float:
        """The largest delay after ``attempt`` failures in a row (the first is attempt 0)."""
        # Capped before multiplying again, so a long outage never overflows to inf.
        ceiling = self.initial
        for _ in range(attempt):
            ceiling = min(self.maximum, ceiling * self.multiplier)
            if ceiling >= self.maximum:
                break
        return ceiling


class Backoff:
    """The delays of one retry loop: :meth:`next_delay` after each failure, :meth:`reset` after a success.

    Each loop owns one, with its own random generator: two processes (or two loops) never
    share a sequence. Pass ``rng`` to make the draws reproducible in tests.
    """

    def __init__(
        self,
        policy: BackoffPolicy,
        *,
        deadline: float | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        #: Give up once waiting would end later than this many seconds after the start (or reset).
        self._budget = deadline
        self._deadline = None if deadline is None else clock() + deadline
        self.attempt = 0

    def next_delay(self) -> float | None:
        """How long to wait before the next try; None once the deadline has passed.

        The wait before the last try is cut short to end at the deadline, so a loop given
        ``deadline`` seconds makes its last try then, not up to one delay earlier.
        """
        ceiling = self.policy.ceiling(self.attempt)
        delay = self._rng.uniform(ceiling * (1 - self.policy.jitter), ceiling)
        if self._deadline is not None:
            remaining = self._deadline - self._clock()
            if remaining <= 0:
                return None
            delay = min(delay, remaining)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """It worked: the next failure starts again from the first delay (and a fresh deadline)."""
        self.attempt = 0
        if self._budget is not None:
            self._deadline = self._clock() + self._budget
