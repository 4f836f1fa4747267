"""Latency distributions for simulated model calls.

A spec is a short string so it fits on a command line and in a JSON config
update: ``fixed:S``, ``uniform:A,B`` or ``lognormal:MEDIAN,SIGMA`` (seconds).
Sampling takes the caller's :class:`random.Random` instead of owning one, so a
single seeded generator drives every random decision of a simulator and a run
is reproducible end to end.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "FixedLatency",
    "LatencyDistribution",
    "LognormalLatency",
    "UniformLatency",
    "parse_latency",
]

SPEC_HELP = "fixed:S, uniform:A,B or lognormal:MEDIAN,SIGMA (seconds)"


class LatencyDistribution(Protocol):
    """Something that draws a non-negative delay in seconds."""

    def sample(self, rng: random.Random) -> float: ...


@dataclass(frozen=True, slots=True)
class FixedLatency:
    """Always the same delay; draws nothing from the generator."""

    seconds: float

    def sample(self, rng: random.Random) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True)
class UniformLatency:
    """A delay drawn uniformly from ``[low, high]``."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True, slots=True)
class LognormalLatency:
    """A right-skewed delay, the usual shape of real LLM response times.

    Parameterised by the median rather than by the mean of the underlying
    normal because the median is the number people actually know ("calls take
    about 2 s"); ``sigma`` controls the length of the tail.
    """

    median: float
    sigma: float

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.median), self.sigma)


def parse_latency(spec: str) -> LatencyDistribution:
    """Parse a latency spec, raising ``ValueError`` that says what is wrong."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise ValueError(f"latency spec {spec!r} must look like {SPEC_HELP}")
    values = _parse_numbers(spec, rest)
    if kind == "fixed":
        (seconds,) = _expect(spec, values, 1)
        if seconds < 0:
            raise ValueError(f"latency spec {spec!r}: the delay must be >= 0")
        return FixedLatency(seconds)
    if kind == "uniform":
        low, high = _expect(spec, values, 2)
        if not 0 <= low <= high:
            raise ValueError(f"latency spec {spec!r}: need 0 <= A <= B")
        return UniformLatency(low, high)
    if kind == "lognormal":
        median, sigma = _expect(spec, values, 2)
        if median <= 0 or sigma < 0:
            raise ValueError(f"latency spec {spec!r}: need MEDIAN > 0 and SIGMA >= 0")
        return LognormalLatency(median, sigma)
    raise ValueError(f"latency spec {spec!r} has unknown kind {kind!r}; expected {SPEC_HELP}")


def _parse_numbers(spec: str, text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"latency spec {spec!r} must contain numbers: {SPEC_HELP}") from None
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"latency spec {spec!r} must contain finite numbers")
    return values


def _expect(spec: str, values: list[float], count: int) -> list[float]:
    if len(values) != count:
        raise ValueError(f"latency spec {spec!r} needs {count} number(s), got {len(values)}")
    return values
