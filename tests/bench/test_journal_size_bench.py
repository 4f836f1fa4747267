"""``python -m bench.journal_size`` runs end to end at a tiny scale and saves its numbers."""

from __future__ import annotations

import json
from pathlib import Path

from bench.journal_size import main


def test_journal_size_measures_and_saves_both_histories(tmp_path: Path) -> None:
    assert main(["--db", "sqlite", "--turns", "3,12", "--results", str(tmp_path)]) == 0

    [saved] = tmp_path.glob("journal_size-*.json")
    rows = json.loads(saved.read_text())["results"]
    assert [(row["turns"], row["cache_marker"]) for row in rows] == [
        (3, False),
        (3, True),
        (12, False),
        (12, True),
    ]
    for row in rows:
        assert row["new_bytes"] > 0 and row["final_conversation_bytes"] < row["old_bytes"]
    assert rows[2]["old_bytes"] > 3 * rows[2]["new_bytes"]  # 12 turns: already far below the old journal
