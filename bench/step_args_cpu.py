"""Coordinator CPU per step spent on an agent loop's step arguments, at the first and the last
tenth of loops of 10 to 5,000 turns: constant, or growing with the conversation (issue 12).

``python -m bench.step_args_cpu [--db sqlite|postgresql|URL] [--turns 10,100,1000,5000]``

Each loop resends its whole conversation at every LLM step (the conversation of
:mod:`bench.journal_size`: a tool result and an assistant reply with a tool call per turn, a
system prompt and tool definitions), optionally with Anthropic's prompt-cache marker moved to
the newest message every turn. Per step, in CPU time of this process (the coordinator's side;
PostgreSQL's server left out), what the coordinator does with the step's arguments between
the workflow code asking for the step and the step's row being in the database:

* ``scratch``: the path before incremental encoding: ``canonical_json`` of the request, then
  ``compact_step_args`` parsing, re-encoding and hashing the whole text, then the insert;
* ``incremental``: the run's :class:`~conveyor.coordinator.args_encoding.ArgsEncoder` (kept
  with the cached run) and ``compact_step_args`` given its result, then the insert.

Both write the same rows (checked). ``scratch`` is only run on the measured steps (the first
and last tenth); the steps between are written the fast way, which stores the same rows. Also
measured, once per loop: reassembling the last step's arguments for its executor (the claim).
Results go to ``results/step_args_cpu-<time>.json`` and stdout, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from conveyor.coordinator.args_encoding import ArgsEncoder
from conveyor.coordinator.model import canonical_json
from conveyor.coordinator.store import Database
from conveyor.coordinator.store.payloads import compact_step_args, expanded_args
from conveyor.coordinator.store.schema import steps, workflows

from .harness.databases import DEFAULT_POSTGRES_URL, fresh_database
from .harness.machine import git_commit
from .journal_size import SYSTEM, TOOLS, conversation_turn, with_cache_marker


def _row(workflow_id: str, number: int, args: str) -> dict[str, Any]:
    return {
        "workflow_id": workflow_id,
        "number": number,
        "kind": "llm",
        "name": "turn",
        "args": args,
        "status": "running",
        "attempt": 0,
        "created_at": 1,
    }


def measure(db: Database, workflow_id: str, turns: int, cache_marker: bool) -> dict[str, Any]:
    with db.writer.begin() as connection:
        connection.execute(
            sa.insert(workflows).values(
                id=workflow_id, name="agent", status="running", shard=0, args="[]", created_at=1, step_count=0
            )
        )
    rng = random.Random(turns)
    tenth = max(1, turns // 10)
    measured = set(range(tenth)) | set(range(turns - tenth, turns))
    encoder = ArgsEncoder()
    messages: list[dict[str, Any]] = []
    cpu: dict[str, list[float]] = {"scratch": [], "incremental": []}
    positions: list[int] = []
    for turn in range(turns):
        user, reply = conversation_turn(rng, turn)
        messages.append(user)
        sent = with_cache_marker(messages) if cache_marker else messages
        request = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "system": SYSTEM,
            "tools": TOOLS,
            "messages": sent,
        }
        # The encoder sees every step, as the cached run's does; the scratch path (no memo) only
        # the measured ones, on the same request, in a transaction rolled back afterwards.
        if turn in measured:
            with db.writer.connect() as connection, connection.begin() as transaction:
                started = time.process_time()
                row = _row(workflow_id, turn, canonical_json(request))
                compact_step_args(connection, db.dialect, [row])
                connection.execute(sa.insert(steps), [row])
                cpu["scratch"].append(time.process_time() - started)
                scratch_row = dict(row)
                transaction.rollback()
            positions.append(turn)
        with db.writer.begin() as connection:
            started = time.process_time()
            encoded = encoder.encode(("llm", "turn"), request)
            row = _row(workflow_id, turn, encoded.text)
            compact_step_args(connection, db.dialect, [row], [encoded])
            connection.execute(sa.insert(steps), [row])
            elapsed = time.process_time() - started
        if turn in measured:
            cpu["incremental"].append(elapsed)
            assert row == scratch_row, f"step {turn}: the incremental path stored a different row"
        messages.append(reply)
    with db.reader.connect() as connection:
        stored, digest = connection.execute(
            sa.select(steps.c.args, steps.c.args_digest).where(
                steps.c.workflow_id == workflow_id, steps.c.number == turns - 1
            )
        ).one()
        # The claim of the step just written takes its text from memory (by digest), once;
        # a later read (a retry, another coordinator) reassembles it from its parts.
        started = time.process_time()
        [claimed] = expanded_args(connection, {0: (workflow_id, stored)}, {0: digest}).values()
        claim_seconds = time.process_time() - started
        started = time.process_time()
        [last] = expanded_args(connection, {0: (workflow_id, stored)}).values()
        expand_seconds = time.process_time() - started
    assert last == claimed == encoded.text, "the last step did not read back byte-identical"
    result: dict[str, Any] = {
        "turns": turns,
        "cache_marker": cache_marker,
        "last_request_bytes": len(encoded.text.encode()),
        "expand_last_step_ms": round(1000 * expand_seconds, 3),
        "claim_last_step_ms": round(1000 * claim_seconds, 3),
        "memo_bytes": encoder.size,
    }
    for path in ("scratch", "incremental"):
        first = [s for s, n in zip(cpu[path], positions, strict=True) if n < tenth]
        last_tenth = [s for s, n in zip(cpu[path], positions, strict=True) if n >= turns - tenth]
        result[f"{path}_ms_first_10pct"] = round(1000 * statistics.median(first), 3)
        result[f"{path}_ms_last_10pct"] = round(1000 * statistics.median(last_tenth), 3)
    return result


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def run(
    kinds: Sequence[str],
    turn_counts: Sequence[int],
    histories: Sequence[bool],
    postgres_url: str,
    results: Path,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    print(f"commit {git_commit()}, load average {_load()}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        for kind in kinds:
            with fresh_database(kind, Path(workdir) / kind, postgres_url) as run_database:
                db = Database(run_database.url)
                try:
                    db.migrate()
                    db.open_cluster(4)
                    for turns in turn_counts:
                        for cache_marker in histories:
                            load_before = _load()
                            row = measure(db, f"agent-{turns}-{int(cache_marker)}", turns, cache_marker)
                            row.update(
                                database=run_database.kind, load_before=load_before, load_after=_load()
                            )
                            rows.append(row)
                            print(_line(row), flush=True)
                finally:
                    db.dispose()
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"step_args_cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {"scenario": "step_args_cpu", "commit": git_commit(), "command": sys.argv, "results": rows}
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"saved {path}")
    return rows


def _line(row: dict[str, Any]) -> str:
    history = "cache-marker" if row["cache_marker"] else "append"
    return (
        f"{row['database']:<10} turns {row['turns']:>5} {history:<12} "
        f"request {row['last_request_bytes']:>10,} B  "
        f"scratch ms {row['scratch_ms_first_10pct']:>7} -> {row['scratch_ms_last_10pct']:>8}  "
        f"incremental ms {row['incremental_ms_first_10pct']:>6} -> {row['incremental_ms_last_10pct']:>6}  "
        f"claim last ms: parts {row['expand_last_step_ms']:>7}, just written {row['claim_last_step_ms']:>6}  "
        f"memo {row['memo_bytes']:,} B  "
        f"load {row['load_before'][0]} -> {row['load_after'][0]}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.step_args_cpu", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--db", action="append", help="sqlite, postgresql or a URL (repeatable; default sqlite)"
    )
    parser.add_argument("--turns", default="10,100,1000,5000", help="comma-separated loop lengths")
    parser.add_argument(
        "--history",
        choices=("append", "cache-marker", "both"),
        default="both",
        help="how the conversation changes",
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    histories = {"append": [False], "cache-marker": [True], "both": [False, True]}[args.history]
    run(
        args.db or ["sqlite"],
        [int(value) for value in args.turns.split(",")],
        histories,
        args.postgres_url,
        args.results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
