"""``python -m bench.step_args_cpu`` runs end to end at a tiny scale, checks that both paths store
the same rows, and saves its numbers."""

from __future__ import annotations

import json
from pathlib import Path

from bench.step_args_cpu import main


def test_step_args_cpu_measures_both_paths_and_saves(tmp_path: Path) -> None:
    assert main(["--db", "sqlite", "--turns", "3,20", "--results", str(tmp_path)]) == 0

    [saved] = tmp_path.glob("step_args_cpu-*.json")
    rows = json.loads(saved.read_text())["results"]
    assert [(row["turns"], row["cache_marker"]) for row in rows] == [
        (3, False),
        (3, True),
        (20, False),
        (20, True),
    ]
    for row in rows:
        for key in ("scratch_ms_first_10pct", "scratch_ms_last_10pct", "incremental_ms_last_10pct"):
            assert row[key] >= 0
        assert row["memo_bytes"] > 0 and row["last_request_bytes"] > 0
