"""Journal bytes per agent-loop workflow: each step's whole request (the old journal) against
compacted arguments (coordinator/store/payloads.py), measured in a real database.

``python -m bench.journal_size [--db sqlite|postgresql|URL ...] [--turns 10,100,150,1000]``

Each workflow is an agent loop of N turns, each an LLM step whose request resends the growing
conversation (a tool result and an assistant reply with a tool call per turn, of varied
lengths, plus a system prompt and tool definitions). The steps are written the way the
replay queue writes them (``compact_step_args`` then the insert, one transaction per step),
and what the journal then holds for the workflow is read back from the database: ``steps.args``
and ``args_digest``, and the parts with their digests (UTF-8 bytes, without row overhead).
"Old" is the sum of the canonical requests, what the journal stored before. Two histories:
append-only, and with Anthropic's prompt-cache marker moved to the newest message every turn
(so the previous last message changes at every step). Also measured, in CPU time of this
process (the coordinator's side; stable on a loaded machine, unlike wall time; it leaves out
PostgreSQL's own work): compacting one step on the writer (median of the first and last 10%
of the loop) and reassembling the last step for its executor (the claim path).
Results go to ``results/journal_size-<time>.json`` and stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from conveyor.coordinator.model import canonical_json
from conveyor.coordinator.store import Database
from conveyor.coordinator.store.payloads import compact_step_args, expanded_args
from conveyor.coordinator.store.schema import blobs, steps, workflows

from .harness.databases import DEFAULT_POSTGRES_URL, fresh_database

SYSTEM = "You are a research agent. Use the tools to find sources, then answer with citations. " * 12
TOOLS = [
    {
        "name": name,
        "description": f"{name}: " + "Looks things up and returns what it finds, with sources. " * 4,
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    }
    for name in ("search", "fetch_page", "run_python")
]


def _text(rng: random.Random, low: int, high: int) -> str:
    words = ("tide", "moon", "gravity", "orbit", "coast", "measure", "sample", "result", "model", "error")
    out: list[str] = []
    length = rng.randint(low, high)
    while sum(map(len, out)) + len(out) < length:
        out.append(rng.choice(words))
    return " ".join(out)


def conversation_turn(rng: random.Random, turn: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the user message that opens the turn, the assistant's reply that closes it)."""
    if turn == 0:
        user: dict[str, Any] = {"role": "user", "content": "Research question: " + _text(rng, 100, 300)}
    else:
        user = {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": f"toolu_{turn - 1:05d}",
                    "content": _text(rng, 80, 900),
                }
            ],
        }
    assistant = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": _text(rng, 40, 300)},
            {
                "type": "tool_use",
                "id": f"toolu_{turn:05d}",
                "name": "search",
                "input": {"query": _text(rng, 10, 60)},
            },
        ],
    }
    return user, assistant


def with_cache_marker(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with a prompt-cache breakpoint on the last block of the newest message."""
    marked = [dict(message) for message in messages]
    last = marked[-1]
    blocks = (
        last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
    )
    last["content"] = [*blocks[:-1], {**blocks[-1], "cache_control": {"type": "ephemeral"}}]
    return marked


def measure(db: Database, workflow_id: str, turns: int, cache_marker: bool) -> dict[str, Any]:
    with db.writer.begin() as connection:
        connection.execute(
            sa.insert(workflows).values(
                id=workflow_id, name="agent", status="running", shard=0, args="[]", created_at=1, step_count=0
            )
        )
    rng = random.Random(turns)
    messages: list[dict[str, Any]] = []
    old_bytes = 0
    compact_seconds: list[float] = []
    reply: dict[str, Any] | None = None
    for turn in range(turns):
        user, reply = conversation_turn(rng, turn)
        messages.append(user)
        sent = with_cache_marker(messages) if cache_marker else messages
        args = canonical_json(
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "system": SYSTEM,
                "tools": TOOLS,
                "messages": sent,
            }
        )
        old_bytes += len(args.encode())
        row: dict[str, Any] = {
            "workflow_id": workflow_id,
            "number": turn,
            "kind": "llm",
            "name": "agent",
            "args": args,
            "status": "completed",
            "attempt": 1,
            "created_at": 1,
        }
        with db.writer.begin() as connection:
            started = time.process_time()
            compact_step_args(connection, db.dialect, [row])
            compact_seconds.append(time.process_time() - started)
            connection.execute(sa.insert(steps), [row])
        messages.append(reply)
    final_conversation = len(canonical_json(messages).encode())
    with db.reader.connect() as connection:
        step_rows = connection.execute(
            sa.select(steps.c.number, steps.c.args, steps.c.args_digest)
            .where(steps.c.workflow_id == workflow_id)
            .order_by(steps.c.number)
        ).all()
        part_rows = connection.execute(
            sa.select(blobs.c.digest, blobs.c.parent, blobs.c.body).where(blobs.c.workflow_id == workflow_id)
        ).all()
        started = time.process_time()
        [last] = expanded_args(connection, {0: (workflow_id, step_rows[-1].args)}).values()
        expand_seconds = time.process_time() - started
    assert last == args, "the last step did not read back byte-identical"
    new_bytes = sum(len(r.args.encode()) + len((r.args_digest or "").encode()) for r in step_rows) + sum(
        len(r.body.encode()) + len(r.digest) + len(r.parent or "") for r in part_rows
    )
    tenth = max(1, turns // 10)
    return {
        "turns": turns,
        "cache_marker": cache_marker,
        "final_conversation_bytes": final_conversation,
        "old_bytes": old_bytes,
        "new_bytes": new_bytes,
        "parts": len(part_rows),
        "new_over_conversation": round(new_bytes / final_conversation, 2),
        "old_over_new": round(old_bytes / new_bytes, 1),
        "compact_ms_first_10pct": round(1000 * statistics.median(compact_seconds[:tenth]), 3),
        "compact_ms_last_10pct": round(1000 * statistics.median(compact_seconds[-tenth:]), 3),
        "expand_last_step_ms": round(1000 * expand_seconds, 3),
        "last_request_bytes": len(args.encode()),
    }


def run(
    kinds: Sequence[str], turn_counts: Sequence[int], postgres_url: str, results: Path
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir:
        for kind in kinds:
            with fresh_database(kind, Path(workdir) / kind, postgres_url) as run_database:
                db = Database(run_database.url)
                try:
                    db.migrate()
                    db.open_cluster(4)
                    for turns in turn_counts:
                        for cache_marker in (False, True):
                            row = measure(db, f"agent-{turns}-{int(cache_marker)}", turns, cache_marker)
                            row["database"] = run_database.kind
                            rows.append(row)
                            print(_line(row), flush=True)
                finally:
                    db.dispose()
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"journal_size-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"scenario": "journal_size", "results": rows}, indent=2) + "\n")
    print(f"saved {path}")
    return rows


def _line(row: dict[str, Any]) -> str:
    history = "cache-marker" if row["cache_marker"] else "append"
    return (
        f"{row['database']:<10} turns {row['turns']:>5} {history:<12} "
        f"conversation {row['final_conversation_bytes']:>10,} B  old {row['old_bytes']:>14,} B  "
        f"new {row['new_bytes']:>10,} B  new/conv {row['new_over_conversation']:>5}  "
        f"old/new {row['old_over_new']:>7}  "
        f"compact CPU ms {row['compact_ms_first_10pct']}->{row['compact_ms_last_10pct']}  "
        f"expand CPU ms {row['expand_last_step_ms']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.journal_size", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db", action="append", help="sqlite, postgresql or a URL (repeatable; default both)"
    )
    parser.add_argument("--turns", default="10,100,150,1000", help="comma-separated loop lengths")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    run(
        args.db or ["sqlite", "postgresql"],
        [int(value) for value in args.turns.split(",")],
        args.postgres_url,
        args.results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
