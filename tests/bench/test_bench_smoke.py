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


def test_fanout_measures_children_and_newer_roots(tmp_path: Path) -> None:
    results, _ = run_scenario(
        tmp_path,
        "fanout",
        "--children 30 --roots 30 --executors 1 --concurrency 5 --latency uniform:0.02,0.05 --orders fifo",
    )
    assert set(results) == {"fifo"}
    for run in results.values():
        assert run["children"] == run["children_completed"] == 30
        assert run["newer_roots"] == 30 and run["roots_completed"] == 31  # and the parent
        assert len(run["child_finishes"]) == 30 and len(run["root_finishes"]) == 30
        assert 0 <= run["share_of_children_before_first_root"] <= 1


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


@pytest.mark.timeout(900)  # eight engine runs, each starting its own servers
def test_peer_runs_every_engine_on_both_workloads(tmp_path: Path) -> None:
    results, _ = run_scenario(
        tmp_path,
        "peer",
        "--workflows 12 --agent-workflows 2 --agent-turns 6 --concurrency 10 --db sqlite",
    )
    for workload, count in (("research", 12), ("agent", 2)):
        rows = {row["engine"]: row for row in results[workload]}
        assert set(rows) == {"conveyor", "dbos", "temporal", "restate"}
        for engine, row in rows.items():
            assert "unavailable" not in row, f"{engine}: {row.get('unavailable')}"
            assert row["completed"] == count, engine
            assert row["cpu_per_1000_steps"] > 0 and row["peak_rss_mib"] > 0, engine
        assert rows["conveyor"]["cpu_per_step_ratio"] == 1.0
        assert rows["temporal"]["store"].startswith("own")


def test_agent_loop_measures_gaps_journal_and_memory(tmp_path: Path) -> None:
    results, directory = run_scenario(
        tmp_path,
        "agent-loop",
        "--lengths 5,20 --workflows 3,2 --tool-every 4 --in-flight 30 --in-flight-turns 50 "
        "--in-flight-seconds 3 --concurrency 10 --db sqlite --cold-restart 6 --cold-restart-depth 2",
    )
    short, long = results["lengths"]["sqlite"]
    assert (short["turns"], short["steps_per_workflow"], short["completed"]) == (5, 6, 3)
    assert (long["turns"], long["steps_per_workflow"], long["completed"]) == (20, 25, 2)
    assert long["steps_done"] == 2 * 25 and long["failed"] == 0
    for gaps in (long["gap_to_enqueue_ms"], long["gap_to_start_ms"]):
        assert gaps["first_10pct"]["p50"] >= 0 and gaps["last_10pct"]["p50"] >= 0
    assert long["enqueue_gap_ratio_p50"] > 0
    # Every step's stored arguments include the whole conversation so far: the journal of the
    # longer loop is larger than its final conversation (today: much larger).
    assert long["journal_bytes_per_workflow"] > long["conversation_bytes_per_workflow"] > 0
    assert len(long["gap_by_step_ms"]) == 24
    in_flight = results["in_flight"]["sqlite"]
    assert in_flight["workflows"] == 30 and in_flight["coordinator_peak_rss_mib"] > 0
    assert in_flight["steps_done"] > 0
    assert (directory / "agent-loop-gaps-sqlite.png").exists()
    # The cold restart: every loop took a step after the coordinator was killed and restarted.
    cold = results["cold_restart"]["sqlite"]
    assert cold["workflows"] == 6 and cold["depth_steps_min"] >= 1
    assert 0 < cold["moved_after_kill_s"]["p50"] <= cold["all_moved_after_kill_s"]
    assert cold["new_coordinator_cpu_seconds"] > 0


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
