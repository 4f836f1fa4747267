"""Durations as options take them (``--retention 7d``) and as the CLI takes times ago."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from conveyor.coordinator.config import OPTIONS, CoordinatorConfig
from conveyor.durations import format_duration, parse_duration
from conveyor.errors import ConfigurationError, InvalidArgument


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400.0), ("12h", 43200.0), ("7d", 604800.0), ("2w", 1209600.0), ("30", 30.0), ("1.5h", 5400.0)],
)
def test_durations_read_in_their_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7x", "d", "-1h", "1h30m", "inf"])
def test_anything_else_is_refused_with_examples(text: str) -> None:
    with pytest.raises(InvalidArgument, match="90m, 12h, 7d"):
        parse_duration(text)


def test_a_duration_is_written_in_its_largest_whole_unit() -> None:
    assert [format_duration(s) for s in (604800, 5400, 1, 90)] == ["1w", "90m", "1s", "90s"]


def test_retention_is_off_by_default_and_read_from_flag_environment_and_file(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    OPTIONS.add_arguments(parser)
    base = ["--db", "sqlite://", "--workflows", "w"]
    assert OPTIONS.resolve(parser.parse_args(base), {})["retention"] is None
    assert CoordinatorConfig(database_url="sqlite://").retention is None
    assert OPTIONS.resolve(parser.parse_args([*base, "--retention", "7d"]), {})["retention"] == 604800.0
    assert OPTIONS.resolve(parser.parse_args(base), {"CONVEYOR_RETENTION": "12h"})["retention"] == 43200.0
    config = tmp_path / "c.toml"
    config.write_text('retention = "90m"\n')
    assert OPTIONS.resolve(parser.parse_args([*base, "--config", str(config)]), {})["retention"] == 5400.0
    config.write_text("retention = 3600\n")
    assert OPTIONS.resolve(parser.parse_args([*base, "--config", str(config)]), {})["retention"] == 3600.0


def test_a_bad_retention_names_where_it_came_from(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    OPTIONS.add_arguments(parser)
    args = parser.parse_args(["--db", "sqlite://", "--workflows", "w"])
    with pytest.raises(ConfigurationError, match="CONVEYOR_RETENTION='7x' is not a duration"):
        OPTIONS.resolve(args, {"CONVEYOR_RETENTION": "7x"})
    with pytest.raises(ConfigurationError, match="at least 1s"):
        OPTIONS.resolve(args, {"CONVEYOR_RETENTION": "0"})
    config = tmp_path / "c.toml"
    config.write_text("retention = true\n")
    with pytest.raises(ConfigurationError, match="retention"):
        OPTIONS.resolve(parser.parse_args(["--config", str(config)]), {})
