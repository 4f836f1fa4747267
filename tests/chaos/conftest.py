"""Fixtures of the fault-injection scenarios: settings for a short chaos run, and a safe PostgreSQL.

Every scenario runs on both databases (the ``database_url`` fixture). Whatever a
scenario does to PostgreSQL, the server is running again when it ends, pass or fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import postgres
from bench.chaos.cluster import ChaosSettings


@pytest.fixture
def chaos_settings(database_url: str, tmp_path: Path) -> Iterator[ChaosSettings]:
    yield ChaosSettings(database_url=database_url, workdir=tmp_path / "cluster")
    if database_url.startswith("postgresql"):
        postgres.ensure_running(database_url)
