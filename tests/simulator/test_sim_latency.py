"""The latency sampler: reproducible with a seed, always within its spec."""

from __future__ import annotations

import random
import statistics

import pytest

from conveyor.testing.simulator import parse_latency
from conveyor.testing.simulator.latency import FixedLatency, LognormalLatency, UniformLatency


def draws(spec: str, seed: int, count: int = 500) -> list[float]:
    distribution = parse_latency(spec)
    rng = random.Random(seed)
    return [distribution.sample(rng) for _ in range(count)]


@pytest.mark.parametrize("spec", ["fixed:0.25", "uniform:0.05,0.1", "lognormal:2,0.5"])
def test_same_seed_gives_same_samples(spec: str) -> None:
    assert draws(spec, seed=42) == draws(spec, seed=42)


def test_different_seeds_give_different_samples() -> None:
    assert draws("uniform:0,1", seed=1) != draws("uniform:0,1", seed=2)


def test_fixed_is_constant_and_draws_nothing() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    assert {FixedLatency(0.25).sample(rng) for _ in range(10)} == {0.25}
    assert rng.getstate() == state


def test_uniform_stays_within_bounds() -> None:
    samples = draws("uniform:0.05,0.1", seed=7, count=2000)
    assert all(0.05 <= sample <= 0.1 for sample in samples)
    assert max(samples) - min(samples) > 0.04  # actually spread, not stuck at one end


def test_lognormal_is_positive_around_its_median() -> None:
    samples = draws("lognormal:2,0.5", seed=11, count=4000)
    assert all(sample > 0 for sample in samples)
    assert statistics.median(samples) == pytest.approx(2.0, rel=0.1)


def test_lognormal_with_zero_sigma_is_the_median() -> None:
    assert draws("lognormal:1.5,0", seed=5, count=5) == pytest.approx([1.5] * 5)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fixed:0", FixedLatency(0.0)),
        ("uniform:1,2.5", UniformLatency(1.0, 2.5)),
        ("lognormal:0.8,0.3", LognormalLatency(0.8, 0.3)),
    ],
)
def test_parses_each_kind(spec: str, expected: object) -> None:
    assert parse_latency(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0.5", "must look like"),
        ("gaussian:1,2", "unknown kind 'gaussian'"),
        ("fixed:abc", "must contain numbers"),
        ("fixed:-1", "must be >= 0"),
        ("fixed:1,2", "needs 1 number"),
        ("uniform:2,1", "0 <= A <= B"),
        ("uniform:1", "needs 2 number"),
        ("lognormal:0,1", "MEDIAN > 0"),
        ("fixed:inf", "finite"),
    ],
)
def test_rejects_bad_specs_readably(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_latency(spec)
