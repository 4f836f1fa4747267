"""Step arguments stored compacted (store/payloads.py), on SQLite and PostgreSQL.

Large arguments are stored as JSON with references to parts kept once per workflow; every
reader (GetWorkflow, the claim path, the migration back) must get the canonical text back
byte for byte, whatever the value, and a growing conversation must cost linear space.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from conveyor.coordinator.args_encoding import ArgsEncoder, EncodedArgs
from conveyor.coordinator.clock import CreationClock
from conveyor.coordinator.model import canonical_digest, canonical_json
from conveyor.coordinator.store import Database, Workflows
from conveyor.coordinator.store.database import migration_config
from conveyor.coordinator.store.payloads import (
    MIN_ARGS_CHARS,
    CorruptJournalError,
    compact_step_args,
    delete_workflow_parts,
    expanded_args,
    recent_args,
)
from conveyor.coordinator.store.replays import ReplayQueue
from conveyor.coordinator.store.schema import blobs, steps, workflows


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    db.open_cluster(4)
    yield db
    db.dispose()


def add_workflow(db: Database, workflow_id: str) -> None:
    with db.writer.begin() as connection:
        connection.execute(
            sa.insert(workflows).values(
                id=workflow_id, name="loop", status="running", shard=0, args="[]", created_at=1, step_count=0
            )
        )


def write_steps(
    db: Database,
    workflow_id: str,
    arguments: Sequence[str],
    first: int = 0,
    encoded: Sequence[EncodedArgs | None] | None = None,
) -> None:
    """Insert steps exactly as the replay queue does: compacted in one batch, then inserted
    (``encoded``: with the arguments as replay's encoder made them)."""
    rows: list[dict[str, Any]] = [
        {
            "workflow_id": workflow_id,
            "number": first + index,
            "kind": "llm",
            "name": f"turn{first + index}",
            "args": args,
            "status": "running",
            "attempt": 0,
            "created_at": 1,
        }
        for index, args in enumerate(arguments)
    ]
    with db.writer.begin() as connection:
        compact_step_args(connection, db.dialect, rows, encoded)
        connection.execute(sa.insert(steps), rows)


def read_back(db: Database, workflow_id: str) -> list[str]:
    """Each step's arguments as GetWorkflow returns them."""
    with db.reader.connect() as connection:
        record = Workflows(4, CreationClock()).get(connection, workflow_id, include_steps=True)
    return [step.args_json for step in record.steps]


def stored_rows(db: Database, workflow_id: str) -> list[Any]:
    with db.reader.connect() as connection:
        return connection.execute(
            sa.select(steps.c.args, steps.c.args_digest)
            .where(steps.c.workflow_id == workflow_id)
            .order_by(steps.c.number)
        ).all()


def stored_chars(db: Database, workflow_id: str) -> int:
    """What the journal holds for the workflow's steps: arguments, digests, parts with their keys."""
    length = sa.func.length
    with db.reader.connect() as connection:
        in_steps = connection.execute(
            sa.select(
                sa.func.sum(length(steps.c.args) + sa.func.coalesce(length(steps.c.args_digest), 0))
            ).where(steps.c.workflow_id == workflow_id)
        ).scalar_one()
        in_parts = connection.execute(
            sa.select(
                sa.func.sum(
                    length(blobs.c.body)
                    + length(blobs.c.digest)
                    + sa.func.coalesce(length(blobs.c.parent), 0)
                )
            ).where(blobs.c.workflow_id == workflow_id)
        ).scalar_one()
    return int(in_steps or 0) + int(in_parts or 0)


def request(messages: list[Any], **extra: Any) -> str:
    return canonical_json({"model": "claude-test", "max_tokens": 1024, "messages": messages, **extra})


BIG = "paragraph " * 200  # 2,000 characters: more than a part's threshold

HOSTILE: dict[str, Any] = {
    "control characters": {"messages": [{"role": "user", "content": '\x00\x01\x1f\x7f\n\t\r"\\' + BIG}]},
    "huge integers": {"messages": [{"n": 10**4000, "m": -(10**300), "f": 1e308, "z": -0.0, "t": 5e-324}] * 3},
    "deep nesting": {"messages": [json.loads("[" * 200 + json.dumps(BIG) + "]" * 200)]},
    "unicode": {
        "messages": [
            {"role": "user", "content": "é漢字🙂\u200d\u202e\ufeff\U0010ffff" * 150},
            {"role": "assistant", "content": [{"type": "text", "text": "ñ" * 3000, "é": "🙂" * 500}]},
        ]
    },
    "one megabyte message": {"messages": [{"role": "user", "content": "x" * 1_048_576}]},
    "identical messages": {"messages": [{"role": "user", "content": BIG}] * 20},
    "forged references in user data": {
        "messages": [
            {"role": "user", "content": '{ "$blob": "' + "A" * 43 + '" } ' + BIG},
            {'{ "$list": "': '{ "$list": "' + "B" * 43 + '" }', "$blob": BIG, "$list": [BIG]},
        ]
    },
    "task payload": {
        "kind": "search",
        "payload": {"queries": [BIG, BIG + "2"], "notes": {"a": [1, 2, {"b": BIG}]}},
    },
    "top-level list": [BIG, {"x": BIG}, [BIG, [BIG]]],
    "top-level string": BIG * 3,
    "empty and small containers": {"messages": [[], {}, "", None, True, False, 0, [[]], BIG]},
    "keys that sort oddly": {"messages": [{"B": 1, "a": 2, "é": 3, "\x00": 4, "": 5, "aa": BIG, "A": [BIG]}]},
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_any_arguments_read_back_byte_identical(database: Database, name: str) -> None:
    canonical = canonical_json(HOSTILE[name])
    add_workflow(database, "wf")

    write_steps(database, "wf", [canonical, canonical, canonical])

    assert read_back(database, "wf") == [canonical] * 3
    for args, digest in stored_rows(database, "wf"):
        if digest is not None:  # compacted: the digest is the full canonical text's
            assert digest == canonical_digest(canonical)
            assert len(args) < len(canonical)
        else:
            assert args == canonical


def with_cache_marker(messages: list[Any]) -> list[Any]:
    """Anthropic's prompt-cache breakpoint on the newest message: it moves every turn, so the
    previous step's last message reads differently in the next step's history."""
    return [*messages[:-1], {**messages[-1], "cache_control": {"type": "ephemeral"}}]


@pytest.mark.parametrize("moving_marker", [False, True], ids=["appended", "moving cache marker"])
def test_a_growing_conversation_is_stored_in_linear_space(database: Database, moving_marker: bool) -> None:
    """150 turns, each resending the whole history: the old scheme stored the sum of all
    histories (quadratic); the journal must stay within 3x the final conversation."""
    add_workflow(database, "loop")
    messages: list[Any] = []
    every_request = []
    for turn in range(150):
        messages.append({"role": "user", "content": f"tool result {turn}: " + "r" * 120})
        sent = with_cache_marker(messages) if moving_marker else messages
        every_request.append(request(sent, system="You are a careful agent. " * 40))
        write_steps(database, "loop", [every_request[-1]], first=turn)
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": f"turn {turn} " + "a" * 100}]}
        )
    final_conversation = len(canonical_json(messages))
    old_scheme = sum(len(text) for text in every_request)

    stored = stored_chars(database, "loop")

    assert old_scheme > 50 * final_conversation  # what the old journal held
    assert stored <= 3 * final_conversation, (stored, final_conversation)
    assert read_back(database, "loop") == every_request


def test_a_history_edited_far_back_and_parallel_calls_read_back_and_share_parts(database: Database) -> None:
    """Not only appends: a trimmed history, an old message changed, and two calls in one
    batch (a gather) sending the same history with different last messages."""
    add_workflow(database, "edits")
    history = [{"role": "user", "content": f"{index} {BIG}"} for index in range(40)]
    first = request(history)
    trimmed = request(history[10:])
    edited = request([*history[:3], {"role": "user", "content": "changed"}, *history[4:]])
    branch_a = request([*history, {"role": "user", "content": "a"}])
    branch_b = request([*history, {"role": "user", "content": "b"}])

    write_steps(database, "edits", [first])
    after_one = stored_chars(database, "edits")
    write_steps(database, "edits", [trimmed, edited], first=1)
    write_steps(database, "edits", [branch_a, branch_b], first=3)

    assert read_back(database, "edits") == [first, trimmed, edited, branch_a, branch_b]
    # The messages themselves (parts of their own) are shared: five requests of ~40 messages
    # cost little more than one.
    assert stored_chars(database, "edits") < 1.5 * after_one


def test_old_plain_rows_and_compacted_rows_read_together(database: Database) -> None:
    """Rows written before compaction existed (plain args, no digest) sit next to new ones."""
    add_workflow(database, "mixed")
    old = request([{"role": "user", "content": BIG}])
    with database.writer.begin() as connection:
        connection.execute(
            sa.insert(steps).values(
                workflow_id="mixed",
                number=0,
                kind="llm",
                name="old",
                args=old,
                status="completed",
                attempt=1,
                created_at=1,
            )
        )
    new = request([{"role": "user", "content": BIG}, {"role": "assistant", "content": BIG + "!"}])

    write_steps(database, "mixed", [new], first=1)

    assert [row.args_digest for row in stored_rows(database, "mixed")] == [None, canonical_digest(new)]
    assert read_back(database, "mixed") == [old, new]
    with database.reader.connect() as connection:
        journal = ReplayQueue.load_journals(connection, ["mixed"])["mixed"]
    assert journal[0].was_called_with(old) and journal[1].was_called_with(new)
    changed = request(
        [{"role": "user", "content": BIG.replace("p", "P", 1)}, {"role": "assistant", "content": BIG + "!"}]
    )
    assert not journal[1].was_called_with(changed)
    assert not journal[0].was_called_with(changed)


def test_short_arguments_are_stored_plain(database: Database) -> None:
    add_workflow(database, "short")
    small = request([{"role": "user", "content": "hi"}])
    assert len(small) < MIN_ARGS_CHARS

    write_steps(database, "short", [small, "null", canonical_json({"seconds": 5})])

    assert [tuple(row) for row in stored_rows(database, "short")] == [
        (small, None),
        ("null", None),
        ('{"seconds":5}', None),
    ]


def test_reading_parts_of_many_steps_costs_a_few_index_lookups_not_one_query_per_part(
    database: Database,
) -> None:
    add_workflow(database, "queries")
    add_workflow(database, "other")
    messages: list[Any] = []
    for turn in range(60):
        messages.append({"role": "user", "content": f"{turn} {BIG}"})
        args = request(messages, tools=[{"name": "t", "doc": BIG}])
        write_steps(database, "queries", [args], first=turn)
        write_steps(database, "other", [args], first=turn)
    statements: list[tuple[str, Any]] = []

    def count(*args: Any) -> None:
        statements.append((args[2], args[3]))

    sa.event.listen(database.reader, "before_cursor_execute", count)
    try:
        read_back(database, "queries")
    finally:
        sa.event.remove(database.reader, "before_cursor_execute", count)

    part_reads = [(sql, parameters) for sql, parameters in statements if "blobs" in sql]
    assert 1 <= len(part_reads) <= 3, statements
    if database.dialect.name == "sqlite":  # the plan walks the key, never the whole table
        with database.reader.connect() as connection:
            for sql, parameters in part_reads:
                plan = [row[3] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, parameters)]
                assert not [step for step in plan if step.startswith("SCAN conveyor_blobs")], plan


def test_a_missing_part_is_reported_as_a_corrupt_journal(database: Database) -> None:
    add_workflow(database, "broken")
    write_steps(database, "broken", [request([{"role": "user", "content": BIG}] * 3)])
    with database.writer.begin() as connection:
        connection.execute(sa.delete(blobs))

    with pytest.raises(CorruptJournalError, match="restore the conveyor_blobs rows"):
        read_back(database, "broken")


def test_rows_of_revision_0007_read_after_the_upgrade_and_the_downgrade_inlines(database_url: str) -> None:
    db = Database(database_url)
    try:
        with db.writer.connect() as connection:
            command.upgrade(migration_config(connection), "0007")
            connection.commit()
        plain = request([{"role": "user", "content": BIG}])
        with db.writer.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO conveyor_workflows (id, name, status, shard, args, created_at, step_count) "
                    "VALUES ('old', 'loop', 'running', 0, '[]', 1, 1)"
                )
            )
            connection.execute(
                sa.text(
                    "INSERT INTO conveyor_steps (workflow_id, number, kind, name, args, status, attempt, "
                    "created_at) VALUES ('old', 0, 'llm', 'turn0', :args, 'completed', 1, 1)"
                ),
                {"args": plain},
            )

        db.migrate()
        db.open_cluster(None)
        grown = request([{"role": "user", "content": BIG}, {"role": "assistant", "content": BIG + "?"}])
        write_steps(db, "old", [grown], first=1)

        assert read_back(db, "old") == [plain, grown]
        assert [row.args_digest is None for row in stored_rows(db, "old")] == [True, False]

        with db.writer.connect() as connection:
            command.downgrade(migration_config(connection), "0007")
            connection.commit()
        with db.reader.connect() as connection:
            rows = (
                connection.execute(sa.text("SELECT args FROM conveyor_steps ORDER BY number")).scalars().all()
            )
            assert rows == [plain, grown]
            assert not sa.inspect(connection).has_table("conveyor_blobs")
    finally:
        db.dispose()


def test_a_workflow_is_deleted_only_with_its_parts(database: Database) -> None:
    """Nothing deletes workflows today; whatever will (retention) must delete their parts, and
    the foreign key refuses a deletion that forgets them rather than leaving orphans."""
    add_workflow(database, "gone")
    add_workflow(database, "kept")
    args = request([{"role": "user", "content": BIG}] * 3)
    write_steps(database, "gone", [args])
    write_steps(database, "kept", [args])

    with pytest.raises(sa.exc.IntegrityError), database.writer.begin() as connection:
        connection.execute(sa.delete(steps).where(steps.c.workflow_id == "gone"))
        connection.execute(sa.delete(workflows).where(workflows.c.id == "gone"))
    with database.writer.begin() as connection:
        assert delete_workflow_parts(connection, ["gone"]) > 0
        connection.execute(sa.delete(steps).where(steps.c.workflow_id == "gone"))
        connection.execute(sa.delete(workflows).where(workflows.c.id == "gone"))

    assert read_back(database, "kept") == [args]


def part_rows(db: Database, workflow_id: str) -> list[Any]:
    with db.reader.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                sa.select(blobs.c.digest, blobs.c.parent, blobs.c.body)
                .where(blobs.c.workflow_id == workflow_id)
                .order_by(blobs.c.digest)
            )
        ]


def test_arguments_encoded_by_replay_are_stored_exactly_as_from_their_text(database: Database) -> None:
    """Replay hands the writer each step's arguments already encoded, reusing the previous
    step's (coordinator/args_encoding.py): the rows and parts must be the ones the text alone
    gives, through growth, a moving cache marker, an edit far back, a trim and a batch of two."""
    add_workflow(database, "scratch")
    add_workflow(database, "encoded")
    encoder = ArgsEncoder()
    messages: list[Any] = []
    for turn in range(60):
        messages.append({"role": "user", "content": f"tool result {turn}: " + "r" * (40 + 37 * turn % 900)})
        if turn == 30:
            messages[2]["content"] = "edited far back"
        if turn == 45:
            del messages[:6]
        values = [{"model": "m", "max_tokens": 9, "system": BIG, "messages": with_cache_marker(messages)}]
        if turn % 20 == 19:  # two calls in one batch, like a gather
            values.append(
                {"model": "m", "max_tokens": 9, "messages": [*messages, {"role": "user", "content": "b"}]}
            )
        encodings = [encoder.encode(("llm", f"call{index}"), value) for index, value in enumerate(values)]
        texts = [encoding.text for encoding in encodings]
        assert texts == [canonical_json(value) for value in values]

        write_steps(database, "scratch", texts, first=turn * 2)
        write_steps(database, "encoded", texts, first=turn * 2, encoded=encodings)
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": f"turn {turn} " + "a" * 90}]}
        )

    assert stored_rows(database, "encoded") == stored_rows(database, "scratch")
    assert part_rows(database, "encoded") == part_rows(database, "scratch")
    assert read_back(database, "encoded") == read_back(database, "scratch")


def test_the_claim_takes_just_written_arguments_or_reassembles_them_identically(database: Database) -> None:
    add_workflow(database, "claimed")
    texts = [
        request([{"role": "user", "content": f"{index} {BIG}"} for index in range(count)]) for count in (3, 4)
    ]
    recent_args.clear()
    write_steps(database, "claimed", texts)
    rows = stored_rows(database, "claimed")
    stored = {index: ("claimed", row.args) for index, row in enumerate(rows)}
    digests = {index: row.args_digest for index, row in enumerate(rows)}
    assert all(digest is not None for digest in digests.values())

    with database.reader.connect() as connection:
        assert expanded_args(connection, stored, digests) == dict(enumerate(texts))  # from memory
        assert recent_args.take(digests[0]) is None  # handed out once
        assert expanded_args(connection, stored, digests) == dict(enumerate(texts))  # from the parts
