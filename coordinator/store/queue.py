"""The FIFO task queue: claims, result recording, lease loss and operator actions.

Tasks are claimed oldest workflow first, ``(workflow_created_at, id)``, so step 3 of
an old workflow runs before step 0 of a newer one. A claim stamps the task with the
executor and a new fencing token; only a result carrying both is applied. Rows stay
in the queue until their step's final result is recorded (transaction 2 of the
brief), so a lost executor loses nothing: its tasks go back to the queue, in the
same FIFO position, when its lease expires.
"""

from __future__ import annotations

import functools
import random
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Update,
    bindparam,
    cast,
    delete,
    func,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import Connection, Row

from conveyor.workflow import RetryPolicy

from .. import retries
from ..clock import seconds_to_us
from ..model import ClaimOrder, ErrorClass, StepStatus
from .dialect import Dialect
from .journal import cancel_workflows, enqueue_replays, finish_steps
from .payloads import expanded_args
from .schema import steps, tasks, workflows

#: Claim statements kept built, one per set of shards an executor leased.
MAX_CACHED_CLAIMS = 64

# The partial indexes' predicates, spelled as literals: SQLite uses a partial index only for
# a query whose WHERE contains the index's terms, and a bound parameter never matches.
_UNCLAIMED = tasks.c.claimed_by.is_(None)
_NOT_DELAYED = tasks.c.delayed == literal_column("0")
_DELAYED = tasks.c.delayed == literal_column("1")

#: Delayed tasks whose wait has passed become claimable: run first by every claim, it reads
#: only the due front of ``ix_tasks_delayed_available_at``.
_promote_due = update(tasks).where(_DELAYED, tasks.c.available_at <= bindparam("now")).values(delayed=0)


@dataclass(frozen=True)
class ClaimedTask:
    task_id: int
    fencing_token: int
    workflow_id: str
    step_number: int
    kind: str
    name: str
    payload_json: str
    attempt: int
    max_attempts: int
    shard: int
    timeout: float | None
    workflow_created_at: int
    #: When it became claimable (enqueued, or its retry backoff ended): the start of its queue wait.
    available_at: int
    #: The workflow's W3C Trace Context as stored (conveyor.tracing.encode): the parent of the attempt's span.
    trace_context: str | None = None


@dataclass(frozen=True)
class ReportedResult:
    """One result as an executor reported it; exactly one of result_json / error_class is set."""

    task_id: int
    fencing_token: int
    result_json: str | None = None
    error_class: ErrorClass | None = None
    error: str = ""
    retry_after: float | None = None
    started_at: int | None = None


class Disposition(IntEnum):
    """What became of a reported result (``conveyor.v1.ResultDisposition`` on the wire)."""

    ACCEPTED = 1
    DUPLICATE = 2
    STALE = 3


@dataclass(frozen=True)
class AttemptOutcome:
    """How one accepted attempt ended, for metrics."""

    task_kind: str
    #: None for a success.
    error_class: ErrorClass | None
    #: The queue will run another attempt (a failure with attempts or rate-limit waits left).
    retried: bool
    #: Seconds from its claim to this result, when the claim time is known.
    claimed_for: float | None


@dataclass
class RecordOutcome:
    dispositions: list[Disposition]
    #: One per accepted result, in request order.
    attempts: list[AttemptOutcome] = field(default_factory=list)
    #: Workflows that got a replay-queue row (their last running step finished).
    replays_enqueued: int = 0
    #: Earliest time a task retried by this batch becomes claimable, and where.
    next_retry_at: int | None = None
    retry_shards: set[int] = field(default_factory=set)


@dataclass
class RequeueOutcome:
    requeued: int = 0
    failed: int = 0
    replays_enqueued: int = 0
    shards: set[int] = field(default_factory=set)


_task_state_columns = (
    tasks.c.id,
    tasks.c.kind,
    tasks.c.workflow_id,
    tasks.c.shard,
    tasks.c.claimed_by,
    tasks.c.claimed_at,
    tasks.c.fencing_token,
    tasks.c.attempt,
    tasks.c.max_attempts,
    tasks.c.initial_backoff,
    tasks.c.backoff_multiplier,
    tasks.c.max_backoff,
    tasks.c.rate_limit_waits,
    tasks.c.max_rate_limit_waits,
)

#: Built once with an expanding IN: building such a statement per call (and its cache key) cost
#: more than running it, on every result batch and every claim.
_task_states = select(*_task_state_columns).where(tasks.c.id.in_(bindparam("ids", expanding=True)))
_delete_tasks = delete(tasks).where(tasks.c.id.in_(bindparam("ids", expanding=True)))
_claimed_details = (
    select(
        steps.c.id, steps.c.number, steps.c.name, steps.c.args, steps.c.args_digest, workflows.c.trace_context
    )
    .join(workflows, workflows.c.id == steps.c.workflow_id)
    .where(steps.c.id.in_(bindparam("ids", expanding=True)))
)

_retry_task = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"))
    .values(
        claimed_by=None,
        claimed_at=None,
        attempt=bindparam("attempt"),
        rate_limit_waits=bindparam("rate_limit_waits"),
        available_at=bindparam("available_at"),
        # Out of the claim's index until `_promote_due` sees `available_at` pass, which for
        # a retry due at once is the very next claim. Set here, not per caller, so that every
        # path that re-queues through this statement keeps the claim's index right.
        delayed=1,
        last_error=bindparam("note"),
    )
)

_note_retry_on_step = (
    update(steps)
    .where(steps.c.id == bindparam("task_id"))
    .values(
        error=bindparam("note"),
        attempt=bindparam("finished_attempt"),
        started_at=bindparam("started_at"),
        executor_id=bindparam("executor_id"),
    )
)


@dataclass
class _AttemptWrites:
    """What a batch of ended attempts writes, gathered so that it is written one way only:
    steps finished (completed or failed: the step row final, the task row gone, the workflow
    enqueued for a replay, which delivers the outcome) and tasks retried (back in the queue after
    their backoff, the attempt noted on the step)."""

    finished: list[dict[str, object]] = field(default_factory=list)
    retried: list[dict[str, object]] = field(default_factory=list)
    #: The workflows of the finished steps: each advances on the outcome.
    workflows: set[str] = field(default_factory=set)

    def finish(
        self,
        *,
        step_id: int,
        workflow_id: str,
        status: StepStatus,
        attempt: int,
        completed_at: int,
        result: str | None = None,
        error: str | None = None,
        started_at: int | None = None,
        executor_id: str | None = None,
        result_token: int | None = None,
    ) -> None:
        self.finished.append(
            {
                "step_id": step_id,
                "status": status,
                "result": result,
                "error": error,
                "attempt": attempt,
                "started_at": started_at,
                "completed_at": completed_at,
                "executor_id": executor_id,
                "result_token": result_token,
            }
        )
        self.workflows.add(workflow_id)

    def retry(
        self, row: Any, verdict: retries.Retry, *, started_at: int | None, executor_id: str | None, now: int
    ) -> int:
        """Queue the task of ``row`` (selected with ``_task_state_columns``) again; returns when
        it becomes claimable."""
        available_at = now + seconds_to_us(verdict.delay)
        self.retried.append(
            {
                "task_id": row.id,
                "attempt": verdict.next_attempt,
                "rate_limit_waits": verdict.rate_limit_waits,
                "available_at": available_at,
                "note": verdict.note,
                "finished_attempt": row.attempt,
                "started_at": started_at,
                "executor_id": executor_id,
            }
        )
        return available_at

    def write(self, connection: Connection, dialect: Dialect, now: int) -> int:
        """Write it all; returns how many workflows were enqueued for a replay."""
        if self.retried:
            connection.execute(_retry_task, self.retried)
            connection.execute(_note_retry_on_step, self.retried)
        if not self.finished:
            return 0
        finish_steps(connection, self.finished)
        connection.execute(_delete_tasks, {"ids": [row["step_id"] for row in self.finished]})
        return enqueue_replays(connection, dialect, self.workflows, now)


def _retry_state(row: object) -> retries.RetryState:
    return retries.RetryState(
        attempt=row.attempt,  # type: ignore[attr-defined]
        policy=RetryPolicy(
            max_attempts=row.max_attempts,  # type: ignore[attr-defined]
            initial_backoff=row.initial_backoff,  # type: ignore[attr-defined]
            multiplier=row.backoff_multiplier,  # type: ignore[attr-defined]
            max_backoff=row.max_backoff,  # type: ignore[attr-defined]
            max_rate_limit_waits=row.max_rate_limit_waits,  # type: ignore[attr-defined]
        ),
        rate_limit_waits=row.rate_limit_waits,  # type: ignore[attr-defined]
    )


@dataclass(frozen=True)
class TaskDeadlines:
    """The start-to-close deadline a claim gives its attempt: the step's timeout (or
    ``default_timeout``) plus ``grace``, for the executor to report after its own timeout fires."""

    default_timeout: float = 600.0
    grace: float = 30.0

    def claim_expression(self) -> ColumnElement[int]:
        default_us = bindparam("deadline_default_us", seconds_to_us(self.default_timeout), BigInteger)
        grace_us = bindparam("deadline_grace_us", seconds_to_us(self.grace), BigInteger)
        timeout_us = cast(tasks.c.timeout * 1_000_000, BigInteger)
        return bindparam("now") + func.coalesce(timeout_us, default_us) + grace_us


class _ClaimPlan(Enum):
    #: One walk of the cross-shard FIFO index, skipping tasks of shards not held.
    WALK = "walk"
    #: Each shard's own walk of its FIFO index, then the oldest of all those.
    SHARD_BY_SHARD = "shard by shard"


#: Fencing tokens are random numbers of this many bits (non-negative in a BIGINT column).
FENCING_TOKEN_BITS = 62


def new_fencing_token() -> int:
    """The fencing token of one claim: unguessable, so a result can only come from the executor the
    task was leased to (or whoever it told), never from one that guessed; one claim's tasks all go to
    the same executor, so they may share it. Never 0, the token of a task nobody claimed yet."""
    return 1 + secrets.randbelow(2**FENCING_TOKEN_BITS - 1)


@dataclass
class TakenBack:
    """Attempts taken back from their executors: each retried (an attempt spent) or failed."""

    retried: int = 0
    failed: int = 0
    replays_enqueued: int = 0
    #: The shards that got a task back in the queue, and when the earliest becomes claimable.
    shards: set[int] = field(default_factory=set)
    next_retry_at: int | None = None


def take_back_attempts(
    connection: Connection,
    dialect: Dialect,
    rows: Sequence[Row[Any, *tuple[Any, ...]]],
    verdicts: Sequence[retries.Retry | retries.GiveUp],
    now: int,
) -> TakenBack:
    """Write each verdict on the attempt of ``rows`` (selected with ``_task_state_columns``)
    that its executor lost: a retry puts the task back in the queue and notes the attempt on
    its step; giving up fails the step and enqueues its workflow for a replay."""
    taken = TakenBack()
    writes = _AttemptWrites()
    for row, verdict in zip(rows, verdicts, strict=True):
        if isinstance(verdict, retries.GiveUp):
            writes.finish(
                step_id=row.id,
                workflow_id=row.workflow_id,
                status=StepStatus.FAILED,
                error=verdict.error,
                attempt=row.attempt,
                started_at=row.claimed_at,
                completed_at=now,
                executor_id=row.claimed_by,
            )
            continue
        available_at = writes.retry(
            row, verdict, started_at=row.claimed_at, executor_id=row.claimed_by, now=now
        )
        taken.shards.add(row.shard)
        taken.next_retry_at = min(taken.next_retry_at or available_at, available_at)
    taken.replays_enqueued = writes.write(connection, dialect, now)
    taken.retried, taken.failed = len(writes.retried), len(writes.finished)
    return taken


class TaskQueue:
    """Write units over the ``tasks`` table. Each method runs inside the writer's transaction."""

    def __init__(
        self,
        dialect: Dialect,
        rng: random.Random | None = None,
        order: ClaimOrder = ClaimOrder.FIFO,
        shard_count: int | None = None,
        deadlines: TaskDeadlines | None = None,
    ) -> None:
        self._dialect = dialect
        #: What a claim stamps into ``deadline_at`` (see :class:`TaskDeadlines`).
        self._deadline_at = (deadlines or TaskDeadlines()).claim_expression()
        #: Picks how a claim over a set of shards is planned (see `_plan`); unknown, every
        #: set is claimed shard by shard.
        self._shard_count = shard_count if shard_count is not None else 2**31
        self._rng = rng or random.Random()
        self._claim_order = ("workflow_created_at", "id") if order is ClaimOrder.FIFO else ("id",)
        self._claim_statements: dict[tuple[frozenset[int] | None, tuple[str, ...], _ClaimPlan], Update] = {}
        #: Shard sets whose last walk came back short: their shards are nearly dry, so a walk
        #: would read through other shards' tasks; they are claimed shard by shard until full.
        self._dry: set[frozenset[int]] = set()

    def _plan(self, shards: frozenset[int] | None) -> _ClaimPlan:
        """How to find the oldest claimable tasks of ``shards``, reading as few rows as possible.

        Both walk only claimable tasks (``ix_tasks_ready_*``: unclaimed, not delayed), one
        walk per task kind served. For a few of many shards, each shard's oldest come from
        its own walk of ``(kind, shard, workflow_created_at, id)``, at most ``limit`` per
        shard and kind, and the oldest of those win: about ``k x limit`` rows read for k
        shards. For most of the shards (k of n with k*k > n, e.g. two executors sharing 100),
        one walk of the cross-shard ``(kind, workflow_created_at, id)``, skipping other
        shards' claimable tasks, reads about ``limit x n / k``. Neither depends on how many
        tasks are queued, claimed, delayed or of other kinds, except a walk over shards that
        have run dry, which `claim` notices and stops doing.
        """
        if shards is None:
            return _ClaimPlan.WALK
        if len(shards) ** 2 > self._shard_count and shards not in self._dry:
            return _ClaimPlan.WALK
        return _ClaimPlan.SHARD_BY_SHARD

    def _claim_statement(
        self, shards: frozenset[int] | None, kinds: tuple[str, ...], plan: _ClaimPlan
    ) -> Update:
        """The claim for one set of shards (``None``: any shard) and task kinds, built once:
        it runs for every dispatch.

        Every walk is of one kind (and one shard, shard by shard) over the partial indexes
        ``ix_tasks_ready_fifo`` / ``ix_tasks_ready_shard_fifo``, which hold only claimable
        tasks: claimed ones, delayed ones and those of other kinds are not in the walk at
        all, so its cost does not grow with them. The walks' oldest are merged in FIFO order.
        """
        statement = self._claim_statements.get((shards, kinds, plan))
        if statement is not None:
            return statement

        def oldest_claimable(kind: str, *where: ColumnElement[bool]) -> Select[tuple[int, int]]:
            return (
                select(tasks.c.id, tasks.c.workflow_created_at)
                .where(
                    tasks.c.kind == kind,
                    *where,
                    _UNCLAIMED,
                    _NOT_DELAYED,
                    # Redundant once `_promote_due` ran; kept so that a task given a future
                    # `available_at` without `delayed` still waits (it is merely walked).
                    tasks.c.available_at <= bindparam("now"),
                )
                .order_by(*(tasks.c[name] for name in self._claim_order))
                .limit(bindparam("limit"))
                .with_for_update(skip_locked=True)
            )

        if plan is _ClaimPlan.WALK:
            held = () if shards is None else (self._dialect.unindexed(tasks.c.shard).in_(sorted(shards)),)
            walks = [oldest_claimable(kind, *held) for kind in kinds]
        else:
            assert shards is not None  # any shard is always one walk
            walks = [
                oldest_claimable(kind, tasks.c.shard == shard) for shard in sorted(shards) for kind in kinds
            ]
        if len(walks) == 1:
            oldest = walks[0].with_only_columns(tasks.c.id)
        else:
            each = []
            for walk in walks:
                candidates = walk.subquery()
                each.append(select(candidates.c.id, candidates.c.workflow_created_at))
            merged = union_all(*each).subquery()
            oldest = (
                select(merged.c.id)
                .order_by(*(merged.c[name] for name in self._claim_order))
                .limit(bindparam("limit"))
            )
        # A CTE, which PostgreSQL runs exactly once: as an IN subquery it may be rescanned
        # for each row updated, and with SKIP LOCKED the rescans claimed more than the limit.
        claimable = oldest.cte("claimable")
        statement = (
            update(tasks)
            .where(tasks.c.id.in_(select(claimable.c.id)))
            .values(
                claimed_by=bindparam("executor_id"),
                claimed_at=bindparam("now"),
                deadline_at=self._deadline_at,
                # Random, not a counter: a token must not be guessable by another executor.
                fencing_token=bindparam("fencing_token"),
            )
            .returning(
                tasks.c.id,
                tasks.c.fencing_token,
                tasks.c.workflow_id,
                tasks.c.kind,
                tasks.c.attempt,
                tasks.c.max_attempts,
                tasks.c.shard,
                tasks.c.timeout,
                tasks.c.workflow_created_at,
                tasks.c.available_at,
            )
        )
        if len(self._claim_statements) >= MAX_CACHED_CLAIMS:  # shard sets change as executors come and go
            self._claim_statements.clear()
        self._claim_statements[shards, kinds, plan] = statement
        return statement

    def claim(
        self,
        connection: Connection,
        executor_id: str,
        shards: Collection[int] | None,
        kinds: Collection[str],
        limit: int,
        now: int,
    ) -> list[ClaimedTask]:
        """Lease up to ``limit`` claimable tasks of ``shards`` (``None``: any shard), oldest
        workflow first (by default)."""
        if limit <= 0 or (shards is not None and not shards) or not kinds:
            return []
        held = None if shards is None else frozenset(shards)
        plan = self._plan(held)
        connection.execute(_promote_due, {"now": now})
        claimed = connection.execute(
            self._claim_statement(held, tuple(sorted(set(kinds))), plan),
            {
                "executor_id": executor_id,
                "limit": limit,
                "now": now,
                "fencing_token": new_fencing_token(),
            },
        ).all()
        if held is not None:
            if plan is _ClaimPlan.WALK and len(claimed) < limit:
                if len(self._dry) >= MAX_CACHED_CLAIMS:
                    self._dry.clear()
                self._dry.add(held)
            elif len(claimed) == limit:
                self._dry.discard(held)
        if not claimed:
            return []
        details = {
            row.id: row for row in connection.execute(_claimed_details, {"ids": [row.id for row in claimed]})
        }
        payloads = expanded_args(
            connection,
            {row.id: (row.workflow_id, details[row.id].args) for row in claimed},
            {row.id: details[row.id].args_digest for row in claimed},
        )
        result = [
            ClaimedTask(
                task_id=row.id,
                fencing_token=row.fencing_token,
                workflow_id=row.workflow_id,
                step_number=details[row.id].number,
                kind=row.kind,
                name=details[row.id].name,
                payload_json=payloads[row.id],
                attempt=row.attempt,
                max_attempts=row.max_attempts,
                shard=row.shard,
                timeout=row.timeout,
                workflow_created_at=row.workflow_created_at,
                available_at=row.available_at,
                trace_context=details[row.id].trace_context,
            )
            for row in claimed
        ]
        result.sort(key=lambda task: (task.workflow_created_at, task.task_id))
        return result

    def record(
        self, connection: Connection, executor_id: str, results: Sequence[ReportedResult], now: int
    ) -> RecordOutcome:
        """Apply a batch of results (transaction 2): finish or retry steps, delete done tasks,
        and enqueue a replay for every workflow with a step finished (it advances on any completion)."""
        outcome = RecordOutcome([Disposition.STALE] * len(results))
        rows = {
            row.id: row for row in connection.execute(_task_states, {"ids": [r.task_id for r in results]})
        }
        writes = _AttemptWrites()
        unmatched: list[int] = []
        for index, result in enumerate(results):
            row = rows.pop(result.task_id, None)  # pop: a second report of a task in one batch is a duplicate
            if row is None:
                unmatched.append(index)
                continue
            if row.claimed_by != executor_id or row.fencing_token != result.fencing_token:
                rows[result.task_id] = row
                continue
            outcome.dispositions[index] = Disposition.ACCEPTED
            started_at = result.started_at or row.claimed_at
            claimed_for = (now - row.claimed_at) / 1e6 if row.claimed_at is not None else None
            final = functools.partial(
                writes.finish,
                step_id=result.task_id,
                workflow_id=row.workflow_id,
                attempt=row.attempt,
                started_at=started_at,
                completed_at=now,
                executor_id=executor_id,
                result_token=result.fencing_token,
            )
            if result.error_class is None:
                outcome.attempts.append(AttemptOutcome(row.kind, None, False, claimed_for))
                final(status=StepStatus.COMPLETED, result=result.result_json)
                continue
            verdict = retries.after_failure(
                _retry_state(row), result.error_class, result.error, result.retry_after, self._rng
            )
            will_retry = not isinstance(verdict, retries.GiveUp)
            outcome.attempts.append(AttemptOutcome(row.kind, result.error_class, will_retry, claimed_for))
            if isinstance(verdict, retries.GiveUp):
                final(status=StepStatus.FAILED, error=verdict.error)
            else:
                available_at = writes.retry(
                    row, verdict, started_at=started_at, executor_id=executor_id, now=now
                )
                outcome.retry_shards.add(row.shard)
                outcome.next_retry_at = min(outcome.next_retry_at or available_at, available_at)
        outcome.replays_enqueued = writes.write(connection, self._dialect, now)
        # After this batch's own outcomes are written, so that a second copy of a result
        # in the same batch is recognised as a duplicate of the first.
        self._classify_unmatched(connection, executor_id, results, unmatched, outcome)
        return outcome

    @staticmethod
    def _classify_unmatched(
        connection: Connection,
        executor_id: str,
        results: Sequence[ReportedResult],
        unmatched: list[int],
        outcome: RecordOutcome,
    ) -> None:
        """A result without a task row is a duplicate if this very report was applied before."""
        if not unmatched:
            return
        applied = {
            row.id: row
            for row in connection.execute(
                select(steps.c.id, steps.c.result_token, steps.c.executor_id).where(
                    steps.c.id.in_([results[i].task_id for i in unmatched]),
                    steps.c.status != StepStatus.RUNNING,
                )
            )
        }
        for index in unmatched:
            step = applied.get(results[index].task_id)
            if (
                step is not None
                and step.result_token == results[index].fencing_token
                and step.executor_id == executor_id
            ):
                outcome.dispositions[index] = Disposition.DUPLICATE

    def release_unheld(self, connection: Connection, executor_id: str, held: Collection[int]) -> int:
        """Return to the queue the tasks leased to ``executor_id`` that it says it does not hold.

        They were pushed to it on a stream that broke before they arrived, so they
        never started: no attempt is spent. The difference is taken here rather than
        with ``NOT IN (held)``: ``held`` comes from the executor and may be longer than
        a statement can carry, while the tasks leased to it are bounded by its capacity.
        """
        leased = connection.execute(select(tasks.c.id).where(tasks.c.claimed_by == executor_id)).scalars()
        unheld = sorted(set(leased) - set(held))
        if not unheld:
            return 0
        return connection.execute(
            update(tasks)
            .where(tasks.c.claimed_by == executor_id, tasks.c.id.in_(unheld))
            .values(claimed_by=None, claimed_at=None)
        ).rowcount

    def requeue_lost(
        self,
        connection: Connection,
        executor_id: str,
        now: int,
        *,
        keep: Collection[int] = (),
        restarted: bool = False,
    ) -> RequeueOutcome:
        """The executor's lease expired: retry its tasks elsewhere at once, or fail those out of attempts.

        With ``restarted`` the executor came back as a new process under the same id:
        the tasks leased to it that it does not list in ``keep`` (the ones it still
        holds) died with the old process, and cost an attempt just as a lost lease does.
        """
        outcome = RequeueOutcome()
        kept = set(keep)
        rows = [
            row
            for row in connection.execute(
                select(*_task_state_columns).where(tasks.c.claimed_by == executor_id)
            ).all()
            if row.id not in kept
        ]
        verdicts = [
            retries.after_lost_lease(_retry_state(row), executor_id, "restarted", "its process was replaced")
            if restarted
            else retries.after_lost_lease(_retry_state(row), executor_id)
            for row in rows
        ]
        taken = take_back_attempts(connection, self._dialect, rows, verdicts, now)
        outcome.requeued, outcome.failed = taken.retried, taken.failed
        outcome.replays_enqueued = taken.replays_enqueued
        outcome.shards = {row.shard for row in rows}
        return outcome

    def fail_pending(
        self, connection: Connection, shards: Collection[int] | None, limit: int, reason: str, now: int
    ) -> tuple[int, int]:
        """Fail queued (unclaimed) tasks; returns (tasks failed, replays enqueued)."""
        query = select(tasks.c.id, tasks.c.workflow_id, tasks.c.attempt).where(tasks.c.claimed_by.is_(None))
        if shards is not None:
            query = query.where(tasks.c.shard.in_(list(shards)))
        query = query.order_by(tasks.c.workflow_created_at, tasks.c.id)
        if limit > 0:
            query = query.limit(limit)
        rows = connection.execute(query.with_for_update(skip_locked=True)).all()
        if not rows:
            return 0, 0
        writes = _AttemptWrites()
        for row in rows:
            # A queued task carries the number of its next attempt; the step keeps the last one run.
            writes.finish(
                step_id=row.id,
                workflow_id=row.workflow_id,
                status=StepStatus.FAILED,
                error=reason,
                attempt=row.attempt - 1,
                completed_at=now,
            )
        return len(rows), writes.write(connection, self._dialect, now)

    def clear(
        self, connection: Connection, shards: Collection[int] | None, limit: int, reason: str, now: int
    ) -> tuple[int, int]:
        """Remove tasks, queued and claimed, cancelling their workflows; returns (tasks, workflows)."""
        query = select(tasks.c.id, tasks.c.workflow_id)
        if shards is not None:
            query = query.where(tasks.c.shard.in_(list(shards)))
        query = query.order_by(tasks.c.workflow_created_at, tasks.c.id)
        if limit > 0:
            query = query.limit(limit)
        rows = connection.execute(query).all()
        if not rows:
            return 0, 0
        cleared = connection.execute(delete(tasks).where(tasks.c.id.in_([row.id for row in rows]))).rowcount
        cancelled = cancel_workflows(connection, {row.workflow_id for row in rows}, reason, now)
        return cleared, len(cancelled)

    def earliest_delayed(self, connection: Connection, now: int) -> int | None:
        """When the next task waiting out a backoff becomes claimable.

        Reads the front of ``ix_tasks_delayed_available_at``, not the whole queue.
        """
        return connection.execute(
            select(func.min(tasks.c.available_at)).where(_DELAYED, tasks.c.available_at > now)
        ).scalar()
