"""Each benchmark scenario, run end to end at a tiny scale: the harness works.

These check that a scenario starts its processes, drives its workload to the end,
and writes its JSON, Markdown summary and plots with the numbers filled in. They
assert nothing about speed (benchmarks measure that, tests do not).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main

pytestmark = pytest.mark.slow


def run_scenario(tmp_path: Path, scenario: str, options: str) -> tuple[dict[str, Any], Path]:
    """Run ``python -m bench SCENARIO OPTIONS``; returns its results.json and its directory."""
    assert main([scenario, "--results", str(tmp_path), *options.split()]) == 0
    [directory] = [path for path in tmp_path.iterdir() if path.name.endswith(f"-{scenario}")]
    document = json.loads((directory / "results.json").read_text())
    assert document["scenario"] == scenario
    assert document["machine"]["logical_cpus"] >= 1
    summary = (directory / "summary.md").read_text()
    for plot in directory.glob("*.png"):
        assert plot.stat().st_size > 1000
        assert f"]({plot.name})" in summary  # every plot is shown in the summary
    assert list(directory.glob("*.png"))
    return document["results"], directory


def test_overhead(tmp_path: Path) -> None:
    results, _ = run_scenario(
        tmp_path,
        "overhead",
        "--workflows 40 --executors 1 --concurrency 10 --repeats 2 --db sqlite",
    )
    [cell] = results["cells"]
    assert cell["runs"] == 2 and cell["failed"] == 0
    assert [run["workflows"] for run in cell["each_run"]] == [40, 40]
    assert cell["steps_per_second"] > 0 and cell["coordinator_peak_rss_mib"] > 0


def test_fifo_runs_both_claim_orders(tmp_path: Path) -> None:
    results, _ = run_scenario(
        tmp_path,
        "fifo",
        "--workflows 60 --executors 1 --concurrency 20 --shards 4 --latency uniform:0.02,0.05",
    )
    assert set(results) == {"fifo", "task-id"}
    for run in results.values():
        assert run["completed"] == 60
        assert len(run["deciles"]) == 10
        assert set(run["steps"]) == {"extract", "analyze_a", "analyze_b", "summarize"}
        assert run["slot_bound"]["bound"] > 0 and -1 <= run["kendall_tau_b"] <= 1


def test_ratelimit(tmp_path: Path) -> None:
    results, _ = run_scenario(
        tmp_path,
        "ratelimit",
        "--rpm 600 --duration 4 --warmup 1 --executors 1 --concurrency 10 --latency uniform:0.01,0.02 "
        "--pacing on",
    )
    paced = results["on"]
    assert paced["requests_total"] > 0 and paced["accepted_per_second"] > 0
    assert paced["limit_per_second"] == 10


def test_scale_on_both_databases(tmp_path: Path, postgres_url: str) -> None:
    results, _ = run_scenario(
        tmp_path,
        "scale",
        f"--sizes 30 --executors 1 --concurrency 10 --db sqlite,postgresql --postgres-url {postgres_url}",
    )
    for kind in ("sqlite", "postgresql"):
        assert [run["workflows"] for run in results[kind].values()] == [30]
        assert all(run["database_mib"] > 0 and run["failed"] == 0 for run in results[kind].values())


def test_peer_runs_dbos_on_the_same_workload(tmp_path: Path) -> None:
    results, _ = run_scenario(tmp_path, "peer", "--workflows 20 --concurrency 10 --db sqlite")
    assert results["sqlite"]["conveyor"]["completed"] == 20
    assert results["sqlite"]["dbos"]["completed"] == 20
    assert results["sqlite"]["total_time_ratio"] > 0


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "")
    if not url:
        pytest.skip("CONVEYOR_TEST_POSTGRES_URL is empty: PostgreSQL runs skipped")
    return url


def test_bigdb_quick_on_both_databases(tmp_path: Path, postgres_url: str) -> None:
    assert (
        main(
            [
                "bigdb",
                "--quick",
                "--db",
                "sqlite,postgresql",
                "--postgres-url",
                postgres_url,
                "--results",
                str(tmp_path),
            ]
        )
        == 0
    )
    [directory] = [path for path in tmp_path.iterdir() if path.name.endswith("-bigdb")]
    document = json.loads((directory / "results.json").read_text())
    assert document["scenario"] == "bigdb" and document["machine"]["logical_cpus"] >= 1
    for kind in ("sqlite", "postgresql"):
        operations = document["results"][kind]["operations"]
        assert {"diagnose", "claim (any shard)", "cancel", "count by status"} <= set(operations)
        assert all(timing["median_ms"] > 0 for timing in operations.values())
    assert "Diagnose median" in (directory / "summary.md").read_text()
