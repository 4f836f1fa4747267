"""The benchmark sampler's CPU accounting between two moments."""

from __future__ import annotations

import pytest

from bench.harness.sampler import Series


def series() -> Series:
    return Series(times=[0.0, 1.0, 2.0], cpu_seconds=[0.0, 1.0, 3.0], rss_bytes=[1, 2, 3])


def test_a_window_between_two_samples_gets_its_share_not_zero() -> None:
    # A smoke-sized run can end before the next sample; it used CPU all the same.
    assert series().cpu_between(0.25, 0.75) == pytest.approx(0.5)
    assert series().cpu_between(0.5, 1.5) == pytest.approx(1.5)


def test_whole_samples_and_windows_past_the_ends() -> None:
    assert series().cpu_between(0.0, 2.0) == pytest.approx(3.0)
    assert series().cpu_between(-5.0, 9.0) == pytest.approx(3.0)
    assert Series().cpu_between(0.0, 1.0) == 0.0
