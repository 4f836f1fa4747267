"""SimulatorConfig validation and updates."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.testing.simulator import SimulatorConfig


def test_defaults_are_valid_and_benign() -> None:
    config = SimulatorConfig()
    assert (config.latency, config.rpm, config.reply, config.api_key, config.seed) == (
        "fixed:0",
        0,
        "echo",
        None,
        None,
    )
    assert config.fault_share == 0
    assert config.fixed_reply is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latency": "sometimes"}, "latency spec"),
        ({"rpm": -1}, "rpm must be an integer >= 0"),
        ({"itpm": 1.5}, "itpm must be an integer"),
        ({"otpm": True}, "otpm must be an integer"),
        ({"error_529": 1.5}, "error_529 must be a probability"),
        ({"hang": -0.1}, "hang must be a probability"),
        ({"truncate": "0.5"}, "truncate must be a probability"),
        ({"error_529": 0.6, "error_500": 0.6}, "add up to 1.2"),
        ({"reply": "parrot"}, "reply must be 'echo' or 'fixed:<text>'"),
        ({"api_key": ""}, "api_key must be a non-empty string"),
        ({"seed": "x"}, "seed must be an integer"),
    ],
)
def test_rejects_invalid_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**kwargs)


def test_fault_shares_may_add_up_to_exactly_one() -> None:
    config = SimulatorConfig(error_529=0.7, error_500=0.1, hang=0.1, truncate=0.1)
    assert config.fault_share == pytest.approx(1)


def test_fixed_reply_text() -> None:
    assert SimulatorConfig(reply="fixed:pong: ok").fixed_reply == "pong: ok"


def test_with_changes_validates_and_keeps_the_rest() -> None:
    config = SimulatorConfig(rpm=10, seed=3)
    updated = config.with_changes({"rpm": 20, "latency": "uniform:0,1"})
    assert (updated.rpm, updated.latency, updated.seed) == (20, "uniform:0,1", 3)
    assert config.rpm == 10
    with pytest.raises(ValueError, match="rpm must be"):
        config.with_changes({"rpm": -5})


def test_with_changes_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown config field\(s\) rmp"):
        SimulatorConfig().with_changes({"rmp": 5})


def test_with_changes_accepts_none_as_unlimited() -> None:
    assert SimulatorConfig(itpm=100).with_changes({"itpm": None}).itpm == 0


def test_public_dict_redacts_the_api_key() -> None:
    data = SimulatorConfig(api_key="sk-secret", rpm=5).public_dict()
    assert data["rpm"] == 5
    assert "sk-secret" not in repr(data)
    assert SimulatorConfig().public_dict()["api_key"] is None


def test_describe_names_limits_and_faults() -> None:
    text = SimulatorConfig(rpm=50, error_529=0.1, api_key="sk-very-secret").describe()
    assert "rpm 50" in text
    assert "itpm unlimited" in text
    assert "error_529 0.1" in text
    assert "auth on" in text
    assert "sk-very-secret" not in text
