"""``python -m bench dbcost`` counts what a run asked of each database, attributed to the run.

Tiny runs on both databases; they check that the numbers are there and hang together
(the writer's commits match PostgreSQL's commit records, the WAL attributed to the run is
part of the server's whole WAL, every table the engine writes is counted), not how big
they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.__main__ import main

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "")
    if not url:
        pytest.skip("CONVEYOR_TEST_POSTGRES_URL is empty: PostgreSQL runs skipped")
    return url


def test_dbcost_on_both_databases(tmp_path: Path, postgres_url: str) -> None:
    options = "--workflows 40 --executors 1 --concurrency 10 --db sqlite,postgresql"
    assert main(["dbcost", "--results", str(tmp_path), *options.split(), "--postgres-url", postgres_url]) == 0
    [directory] = list(tmp_path.iterdir())
    runs = {
        run["database"]: run
        for run in json.loads((directory / "results.json").read_text())["results"]["runs"]
    }
    assert set(runs) == {"sqlite", "postgresql"}
    for run in runs.values():
        assert run["failed"] == 0 and run["steps"] == 160
        assert run["write_transactions_per_step"] > 0
        assert run["writer_statements_by_verb_per_step"]["INSERT"] > 0
        assert run["rows_written_per_step"] > 1  # a step writes its journal row, its task, its replay row
        assert run["wal_bytes_per_step"] > 0 and run["stored_bytes_per_step"] > 0
    postgres = runs["postgresql"]
    assert postgres["wal_scan_error"] is None
    # Every transaction the writer committed left one commit record in the WAL, and nothing else did
    # (migrations and the clean-up of the schema add a few).
    writer_commits = postgres["write_transactions_per_step"] * postgres["steps"]
    wal_commits = postgres["wal_commits_per_step"] * postgres["steps"]
    assert writer_commits <= wal_commits <= writer_commits + 20
    assert postgres["wal_bytes_per_step"] * postgres["steps"] <= postgres["server_wal_bytes_all_users"]
    for table in ("conveyor_steps", "conveyor_tasks", "conveyor_replay_queue", "conveyor_workflows"):
        assert postgres["rows_written_per_step_by_table"][table] > 0
    assert postgres["backend_cpu_ms_per_step"] > 0
    assert "![database cost per step](dbcost.png)" in (directory / "summary.md").read_text()
