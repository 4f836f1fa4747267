"""The words an ALREADY_EXISTS refusal uses to say where two starts' arguments differ."""

from __future__ import annotations

from conveyor.coordinator.json_difference import first_difference


def test_equal_values_have_no_difference() -> None:
    assert first_difference({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}) is None


def test_the_first_difference_in_key_order_is_named_by_its_path() -> None:
    assert first_difference({"b": 1, "a": [1, 2]}, {"b": 2, "a": [1, 3]}) == (
        "at $.a[1]: stored 2, this request has 3"
    )
    assert first_difference({"odd key": 1}, {"odd key": 2}) == 'at $["odd key"]: stored 1, this request has 2'


def test_missing_and_extra_keys_lengths_and_types_are_differences() -> None:
    assert first_difference({"a": 1}, {}) == "at $.a: stored 1, missing from this request"
    assert first_difference({}, {"a": 1}) == "at $.a: not stored, this request has 1"
    assert first_difference([1], [1, 2]) == "at $: stored 1 items, this request has 2"
    assert first_difference({"a": 1}, {"a": 1.0}) == "at $.a: stored 1, this request has 1.0"
    assert first_difference({"a": 1}, {"a": True}) == "at $.a: stored 1, this request has true"


def test_long_values_are_cut() -> None:
    difference = first_difference("x" * 500, "y")
    assert difference is not None and len(difference) < 200 and difference.count("…") == 1
