"""The tables, as SQLAlchemy Core objects (the hot paths use Core, not the ORM).

Every timestamp is an integer count of microseconds since the Unix epoch (UTC), see
:mod:`conveyor.coordinator.clock`. Statuses and kinds are the strings of :mod:`conveyor.coordinator.model`.

Every name carries the ``conveyor_`` prefix (tables, indexes, constraints; see
:mod:`conveyor.coordinator.store.namespace`); the Python names drop it. The migrations under
``migrations/versions`` create exactly these tables; a test compares a migrated database with
this metadata on both dialects.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)

from .dialect import AUTOINCREMENT_ID
from .namespace import PREFIX


def _table_stem(_constraint: Any, table: Table) -> str:
    return table.name.removeprefix(PREFIX)


def _referred_stem(constraint: Any, _table: Table) -> str:
    return str(constraint.elements[0].target_fullname).split(".")[0].removeprefix(PREFIX)


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index over only the rows matching ``where`` (SQL both databases read alike)."""
    return Index(name, *columns, unique=unique, postgresql_where=text(where), sqlite_where=text(where))


#: Every name starts with ``conveyor_`` (see `conveyor.coordinator.store.namespace`): in PostgreSQL,
#: index and constraint names share one namespace per schema with the application's.
metadata = MetaData(
    naming_convention={
        "table_stem": _table_stem,
        "referred_stem": _referred_stem,
        "ix": f"{PREFIX}ix_%(table_stem)s_%(column_0_N_name)s",
        "uq": f"{PREFIX}uq_%(table_stem)s_%(column_0_N_name)s",
        "fk": f"{PREFIX}fk_%(table_stem)s_%(column_0_name)s_%(referred_stem)s",
        "pk": f"{PREFIX}pk_%(table_stem)s",
    }
)

ID_LENGTH = 64
NAME_LENGTH = 200
#: conveyor.coordinator.model.canonical_digest: SHA-256, base64url without padding.
DIGEST_LENGTH = 43

#: One row: facts fixed when the database is created, and the executor epoch.
cluster = Table(
    f"{PREFIX}cluster",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("shard_count", Integer, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

workflows = Table(
    f"{PREFIX}workflows",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("name", String(NAME_LENGTH), nullable=False),
    Column("status", String(16), nullable=False),
    Column("shard", Integer, nullable=False),
    Column("args", Text, nullable=False),
    Column("result", Text),
    Column("error", Text),
    Column("idempotency_key", String(NAME_LENGTH)),
    # Strictly increasing in start order: the FIFO key of every task of the workflow.
    Column("created_at", BigInteger, nullable=False),
    Column("completed_at", BigInteger),
    Column("step_count", Integer, nullable=False),
    # Activations run so far (see conveyor.coordinator.replay); NULL for a workflow started before
    # activations were recorded, whose next replay reconstructs them from its journal.
    Column("activations", Integer),
    # W3C Trace Context of the start (JSON), handed to every task: conveyor.tracing.
    Column("trace_context", Text),
    # A child workflow (ctx.child): the parent, the parent's step that waits for it, and its
    # root's created_at, which is the FIFO key of the child's tasks (a child of an old workflow is
    # served before a newer root). All NULL for a root workflow, whose FIFO key is created_at.
    Column("parent_id", String(ID_LENGTH)),
    Column("parent_step", Integer),
    Column("root_created_at", BigInteger),
    # A key belongs to a workflow name: the same key may start one workflow of each name.
    UniqueConstraint("name", "idempotency_key"),
    Index(None, "created_at"),
    Index(None, "status", "created_at"),
    Index(None, "name", "created_at"),
    Index(None, "name", "status"),
    # Retention and PurgeWorkflows: the finished workflows of a status, oldest finish first.
    # Running workflows (no completed_at) stay out of it, so starting one does not touch it.
    partial_index(
        f"{PREFIX}ix_workflows_finished",
        "status",
        "completed_at",
        where="completed_at IS NOT NULL",
    ),
    # A parent's children (cancelled with it, listed by get); roots are left out.
    partial_index(
        f"{PREFIX}ix_workflows_parent_id",
        "parent_id",
        where="parent_id IS NOT NULL",
    ),
)

#: The FIFO key of a workflow's tasks and replays: its root's creation time.
FIFO_KEY = func.coalesce(workflows.c.root_created_at, workflows.c.created_at)

#: The journal: one row per step a workflow took, numbered from 0.
steps = Table(
    f"{PREFIX}steps",
    metadata,
    Column("id", AUTOINCREMENT_ID, primary_key=True, autoincrement=True),
    Column("workflow_id", String(ID_LENGTH), ForeignKey(f"{PREFIX}workflows.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("name", String(NAME_LENGTH), nullable=False),
    # Canonical JSON, or its compacted form (parts in ``blobs``; see store/payloads.py) when
    # ``args_digest`` is set: the SHA-256 of the canonical JSON, which replay compares.
    Column("args", Text, nullable=False),
    Column("args_digest", String(DIGEST_LENGTH)),
    Column("status", String(16), nullable=False),
    Column("result", Text),
    # The final error, or while RUNNING the error of the last attempt that will be retried.
    Column("error", Text),
    Column("attempt", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("completed_at", BigInteger),
    Column("wake_at", BigInteger),
    Column("executor_id", String(NAME_LENGTH)),
    # Fencing token of the accepted result: tells a duplicate report from a stale one.
    Column("result_token", BigInteger),
    # The activation that delivered the step's outcome to the workflow code; NULL while running or
    # finished but not delivered yet; 0 for outcomes never delivered (ctx.now()/ctx.random(), steps
    # the workflow cancelled itself). See conveyor.coordinator.replay.
    Column("delivered_in", Integer),
    UniqueConstraint("workflow_id", "number"),
    # "Which steps of these workflows are still in progress?" after every result batch.
    partial_index(
        f"{PREFIX}ix_steps_running_workflow_id",
        "workflow_id",
        where="status = 'running'",
    ),
    # "Which steps of these workflows have an outcome still to deliver?" after every replay: the
    # running steps and the few finished ones not delivered yet, however long the journal.
    partial_index(
        f"{PREFIX}ix_steps_undelivered_workflow_id",
        "workflow_id",
        where="delivered_in IS NULL",
    ),
    partial_index(
        f"{PREFIX}ix_steps_sleeping_wake_at",
        "wake_at",
        where="status = 'running' AND kind = 'sleep'",
    ),
    # Signal waits with a timeout, by when it expires: the timer loop fires them like sleeps.
    partial_index(
        f"{PREFIX}ix_steps_signal_wake_at",
        "wake_at",
        where="status = 'running' AND kind = 'signal'",
    ),
)

#: Signals sent to workflows (SignalWorkflow). A row is buffered until a
#: ``ctx.wait_for_signal`` step of its name takes it (``step_number`` set), oldest first;
#: delivered rows stay, so a repeated send with the same idempotency key is recognised.
signals = Table(
    f"{PREFIX}signals",
    metadata,
    Column("id", AUTOINCREMENT_ID, primary_key=True, autoincrement=True),
    Column("workflow_id", String(ID_LENGTH), ForeignKey(f"{PREFIX}workflows.id"), nullable=False),
    Column("name", String(NAME_LENGTH), nullable=False),
    Column("payload", Text, nullable=False),
    Column("idempotency_key", String(ID_LENGTH)),
    Column("sent_at", BigInteger, nullable=False),
    # The wait step that received it; NULL while buffered.
    Column("step_number", Integer),
    # The buffer of a workflow, in the order sent.
    partial_index(
        f"{PREFIX}ix_signals_buffered",
        "workflow_id",
        "id",
        where="step_number IS NULL",
    ),
    Index(f"{PREFIX}ix_signals_workflow_id", "workflow_id"),
    partial_index(
        f"{PREFIX}ux_signals_idempotency_key",
        "workflow_id",
        "idempotency_key",
        unique=True,
        where="idempotency_key IS NOT NULL",
    ),
)

#: The parts of compacted step arguments, content-addressed per workflow (store/payloads.py):
#: a JSON value (``parent`` NULL), or a run of list elements continuing the list prefix
#: ``parent``. Written once however many steps resend them; deleted only with the workflow
#: (the foreign key makes a delete of a workflow that forgets them fail).
blobs = Table(
    f"{PREFIX}blobs",
    metadata,
    Column("workflow_id", String(ID_LENGTH), ForeignKey(f"{PREFIX}workflows.id"), nullable=False),
    Column("digest", String(DIGEST_LENGTH), nullable=False),
    Column("parent", String(DIGEST_LENGTH)),
    Column("body", Text, nullable=False),
    PrimaryKeyConstraint("workflow_id", "digest"),
)

#: The FIFO task queue: one row per LLM/task step in progress (its id is the step's).
#: Rows stay while the task is queued, claimed or waiting to retry, and are deleted
#: in the transaction that records the step's final result.
tasks = Table(
    f"{PREFIX}tasks",
    metadata,
    Column("id", BigInteger, ForeignKey(f"{PREFIX}steps.id"), primary_key=True, autoincrement=False),
    Column("shard", Integer, nullable=False),
    Column("workflow_created_at", BigInteger, nullable=False),
    Column("workflow_id", String(ID_LENGTH), nullable=False),
    Column("kind", String(NAME_LENGTH), nullable=False),
    # The attempt that runs next (or runs now, when claimed); 1 for the first.
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("initial_backoff", Float, nullable=False),
    Column("backoff_multiplier", Float, nullable=False),
    Column("max_backoff", Float, nullable=False),
    Column("rate_limit_waits", Integer, nullable=False),
    Column("max_rate_limit_waits", Integer, nullable=False),
    Column("timeout", Float),
    # Not claimable before this time (retry backoff, rate-limit wait).
    Column("available_at", BigInteger, nullable=False),
    Column("claimed_by", String(NAME_LENGTH)),
    Column("claimed_at", BigInteger),
    # Bumped by every claim; a result must carry the current value to be accepted.
    Column("fencing_token", BigInteger, nullable=False),
    Column("last_error", Text),
    # Start-to-close deadline of the claimed attempt (claimed_at + timeout + grace): past it the
    # coordinator takes the task back from its executor. Meaningful only while claimed.
    Column("deadline_at", BigInteger),
    # 1 while waiting out a retry backoff or rate-limit wait (``available_at`` in the
    # future when it was set), 0 otherwise. It keeps waiting tasks out of the claim's
    # index; the claim itself clears it once ``available_at`` has passed (see
    # `conveyor.coordinator.store.queue`). An integer, not a boolean: the partial indexes below
    # compare it with the literal 0/1 that both databases spell the same way.
    Column("delayed", Integer, nullable=False, server_default=text("0")),
    Index(f"{PREFIX}ix_tasks_fifo", "shard", "workflow_created_at", "id"),
    # The same order across shards: the claim that falls back to any shard walks it.
    Index(None, "workflow_created_at", "id"),
    # Exactly the claimable tasks, in FIFO order per kind (and per shard): a claim walks
    # only rows it can take, however many tasks are claimed, waiting out a backoff, or of
    # kinds no connected executor serves.
    partial_index(
        f"{PREFIX}ix_tasks_ready_fifo",
        "kind",
        "workflow_created_at",
        "id",
        where="claimed_by IS NULL AND delayed = 0",
    ),
    partial_index(
        f"{PREFIX}ix_tasks_ready_shard_fifo",
        "kind",
        "shard",
        "workflow_created_at",
        "id",
        where="claimed_by IS NULL AND delayed = 0",
    ),
    # Tasks waiting out a backoff, by when they become claimable: the claim's promotion
    # and the retry timer's "next due" read only the front of it.
    partial_index(
        f"{PREFIX}ix_tasks_delayed_available_at",
        "available_at",
        where="delayed = 1",
    ),
    # A lease's tasks (expiry, release, Diagnose's per-executor counts); unclaimed rows,
    # nearly all of them, are left out.
    partial_index(
        f"{PREFIX}ix_tasks_claimed_by",
        "claimed_by",
        where="claimed_by IS NOT NULL",
    ),
    # Cancels delete a workflow's tasks; Diagnose joins tasks to their workflows.
    Index(None, "workflow_id"),
    # Only claimed tasks (at most the executors' total capacity): the deadline sweep's index.
    partial_index(
        f"{PREFIX}ix_tasks_deadline_at",
        "deadline_at",
        where="claimed_by IS NOT NULL",
    ),
)

#: Workflows due for a replay. Invariant: a running workflow with a finished step whose
#: outcome is not delivered yet, or with no step in progress at all, has a row here.
#: Inserted in the transaction that finishes any of its steps (or starts it); deleted in
#: the transaction that replays it, unless a step finished meanwhile.
replay_queue = Table(
    f"{PREFIX}replay_queue",
    metadata,
    Column("workflow_id", String(ID_LENGTH), ForeignKey(f"{PREFIX}workflows.id"), primary_key=True),
    Column("shard", Integer, nullable=False),
    Column("workflow_created_at", BigInteger, nullable=False),
    Column("enqueued_at", BigInteger, nullable=False),
    Index(f"{PREFIX}ix_replay_queue_fifo", "workflow_created_at", "workflow_id"),
    Index(None, "shard"),
)

#: Every executor that ever registered, and its last known state.
executors = Table(
    f"{PREFIX}executors",
    metadata,
    Column("id", String(NAME_LENGTH), primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("task_kinds", Text, nullable=False),
    Column("peer", String(NAME_LENGTH), nullable=False),
    Column("connected_at", BigInteger, nullable=False),
    Column("last_heartbeat_at", BigInteger, nullable=False),
)

#: Which executor leases which shard, per pool of executors serving the same task kinds.
shard_leases = Table(
    f"{PREFIX}shard_leases",
    metadata,
    Column("pool", String(NAME_LENGTH), nullable=False),
    Column("shard", Integer, nullable=False),
    Column("executor_id", String(NAME_LENGTH), nullable=False),
    Column("assigned_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("pool", "shard"),
)

#: How many workflows of each name are in each status, kept by database triggers on
#: ``workflows`` (created by migration 0003, see `conveyor.coordinator.store.counts`) in the same
#: transaction as every insert, status change and delete, whichever code makes it.
#: ``CountWorkflows`` and ``Diagnose`` read this instead of counting ``workflows``.
workflow_counts = Table(
    f"{PREFIX}workflow_counts",
    metadata,
    Column("name", String(NAME_LENGTH), nullable=False),
    Column("status", String(16), nullable=False),
    Column("total", BigInteger, nullable=False),
    PrimaryKeyConstraint("name", "status"),
)

#: The marker of the writer's last committed transaction. Each write transaction inserts a
#: new id (and deletes the older ones): when the connection dies during COMMIT, the writer
#: looks for its marker to learn whether the transaction committed, instead of re-running
#: units that are not idempotent (claims, starts without a key, epoch bumps).
write_commits = Table(
    f"{PREFIX}write_commits",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("committed_at", BigInteger, nullable=False),
)

#: One row: the coordinator holding this database's exclusive lock, for the message a
#: second coordinator refuses to start with (the lock itself is not a row, see database.py).
coordinator_holder = Table(
    f"{PREFIX}coordinator_holder",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host", String(NAME_LENGTH), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", BigInteger, nullable=False),
)

#: One row on PostgreSQL: the coordinator that leads (may write) and until when, see
#: leadership.py. ``term`` rises by one at every takeover; the leader's every write
#: transaction reads it first, so a deposed leader's writes are refused.
leadership = Table(
    f"{PREFIX}leadership",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("term", BigInteger, nullable=False),
    Column("holder", String(NAME_LENGTH), nullable=False),
    Column("address", String(NAME_LENGTH), nullable=False),
    Column("deadline_us", BigInteger, nullable=False),
    Column("elected_at_us", BigInteger, nullable=False),
)

ALL_TABLES = (
    cluster,
    workflows,
    steps,
    blobs,
    tasks,
    replay_queue,
    signals,
    executors,
    shard_leases,
    write_commits,
    coordinator_holder,
    workflow_counts,
    leadership,
)
