"""Fixtures of the fault-injection scenarios: settings for a short chaos run, and a safe PostgreSQL.

Every scenario runs on both databases (the ``database_url`` fixture). Whatever a
scenario does to PostgreSQL, the server is running again when it ends, pass or fail.
"""

from __future__ import annotations

import tempfile
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


@pytest.fixture
def restartable_chaos_settings(database_url: str, tmp_path: Path) -> Iterator[ChaosSettings]:
    """``chaos_settings`` whose PostgreSQL is a server of this test's own, free to restart.

    Restarting the machine's shared server would break every other test run on it (CI
    runs and engineers share it). SQLite runs are as in ``chaos_settings``.
    """
    workdir = tmp_path / "cluster"
    if not database_url.startswith("postgresql"):
        yield ChaosSettings(database_url=database_url, workdir=workdir)
        return
    # Not under tmp_path: pytest's directory is private to root, and the server runs as postgres.
    with tempfile.TemporaryDirectory(prefix="conveyor-postgres-") as directory:
        server = postgres.PrivateServer(Path(directory))
        server.start()
        try:
            yield ChaosSettings(database_url=server.url, workdir=workdir, postgres_server=server)
        finally:
            server.stop()
