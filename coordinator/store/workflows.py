"""Starting, cancelling and reading workflows."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, insert, select
from sqlalchemy.engine import Connection

from conveyor.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

from ..clock import CreationClock
from ..json_difference import first_difference
from ..model import StepKind, StepStatus, WorkflowStatus, canonical_json
from ..shards import shard_for
from .children import ChildLink, Children
from .journal import cancel_workflows
from .payloads import expanded_args
from .schema import replay_queue, steps, workflow_counts, workflows
from .wakeups import note_replays_enqueued


@dataclass(frozen=True)
class StartRequest:
    name: str
    #: Canonical JSON of the arguments (validated by the caller).
    args_json: str
    idempotency_key: str | None = None
    #: The W3C Trace Context of the start, stored for its tasks (conveyor.tracing.encode).
    trace_context: str | None = None


@dataclass(frozen=True)
class Started:
    workflow_id: str
    already_existed: bool


@dataclass(frozen=True)
class StepRecord:
    number: int
    kind: StepKind
    name: str
    status: StepStatus
    attempt: int
    args_json: str
    result_json: str | None
    error: str | None
    created_at: int
    started_at: int | None
    completed_at: int | None
    executor_id: str | None


@dataclass(frozen=True)
class WorkflowRecord:
    id: str
    name: str
    status: WorkflowStatus
    args_json: str
    result_json: str | None
    error: str | None
    shard: int
    idempotency_key: str | None
    created_at: int
    completed_at: int | None
    step_count: int
    steps: tuple[StepRecord, ...] = ()
    parent_id: str | None = None
    parent_step: int | None = None
    children: tuple[ChildLink, ...] = ()


@dataclass(frozen=True)
class WorkflowSelection:
    """Running workflows picked by a filter, as ``CancelWorkflows`` takes them; None means any."""

    shards: Collection[int] | None = None
    name: str | None = None
    #: Only workflows with ``created_at`` strictly before / after these times.
    started_before: int | None = None
    started_after: int | None = None

    def oldest_first(self) -> Select[str]:
        query = select(workflows.c.id).where(workflows.c.status == WorkflowStatus.RUNNING)
        if self.shards is not None:
            query = query.where(workflows.c.shard.in_(list(self.shards)))
        if self.name:
            query = query.where(workflows.c.name == self.name)
        if self.started_before is not None:
            query = query.where(workflows.c.created_at < self.started_before)
        if self.started_after is not None:
            query = query.where(workflows.c.created_at > self.started_after)
        return query.order_by(workflows.c.created_at)


WORKFLOW_COLUMNS = (
    workflows.c.id,
    workflows.c.name,
    workflows.c.status,
    workflows.c.args,
    workflows.c.result,
    workflows.c.error,
    workflows.c.shard,
    workflows.c.idempotency_key,
    workflows.c.created_at,
    workflows.c.completed_at,
    workflows.c.step_count,
    workflows.c.parent_id,
    workflows.c.parent_step,
)


def step_record(s: Any, args_json: str) -> StepRecord:
    """A ``steps`` row as a :class:`StepRecord`; ``args_json`` is its arguments expanded
    (:func:`~conveyor.coordinator.store.payloads.expanded_args`: the row may hold them compacted)."""
    return StepRecord(
        number=s.number,
        kind=StepKind(s.kind),
        name=s.name,
        status=StepStatus(s.status),
        attempt=s.attempt,
        args_json=args_json,
        result_json=s.result,
        error=s.error,
        created_at=s.created_at,
        started_at=s.started_at,
        completed_at=s.completed_at,
        executor_id=s.executor_id,
    )


def workflow_record(row: object, step_records: tuple[StepRecord, ...] = ()) -> WorkflowRecord:
    """A row of :data:`WORKFLOW_COLUMNS` as a :class:`WorkflowRecord`."""
    r = row  # rows are attribute-accessible tuples
    return WorkflowRecord(
        id=r.id,  # type: ignore[attr-defined]
        name=r.name,  # type: ignore[attr-defined]
        status=WorkflowStatus(r.status),  # type: ignore[attr-defined]
        args_json=r.args,  # type: ignore[attr-defined]
        result_json=r.result,  # type: ignore[attr-defined]
        error=r.error,  # type: ignore[attr-defined]
        shard=r.shard,  # type: ignore[attr-defined]
        idempotency_key=r.idempotency_key,  # type: ignore[attr-defined]
        created_at=r.created_at,  # type: ignore[attr-defined]
        completed_at=r.completed_at,  # type: ignore[attr-defined]
        step_count=r.step_count,  # type: ignore[attr-defined]
        steps=step_records,
        parent_id=r.parent_id,  # type: ignore[attr-defined]
        parent_step=r.parent_step,  # type: ignore[attr-defined]
    )


@dataclass(frozen=True)
class _KeyedStart:
    """A workflow started with an idempotency key: what a repeat of its start is compared with."""

    workflow_id: str
    args_json: str


def _check_same_arguments(earlier: _KeyedStart, request: StartRequest, index: int | None) -> None:
    """Refuse a start whose key is known for its name with other arguments (canonical JSON)."""
    if earlier.args_json == request.args_json:
        return
    stored = json.loads(earlier.args_json) if earlier.args_json else None
    given = json.loads(request.args_json) if request.args_json else None
    if canonical_json(stored) == canonical_json(given):  # stored before arguments were canonical
        return
    where = first_difference(stored, given) or "they differ"
    prefix = f"workflow #{index}: " if index is not None else ""
    raise AlreadyExists(
        f"{prefix}idempotency key {request.idempotency_key!r} already started {request.name!r} workflow "
        f"{earlier.workflow_id} with other arguments ({where}). Send the same arguments to get that "
        "workflow back, or use a new key to start another one."
    )


class Workflows:
    """Units and reads over the ``workflows`` table and its journal."""

    def __init__(self, shard_count: int, clock: CreationClock) -> None:
        self._shard_count = shard_count
        self._clock = clock

    def start(self, connection: Connection, requests: Sequence[StartRequest]) -> list[Started]:
        """Insert workflows and their first replay-queue rows; replays start their steps.

        Creation times come from one strictly increasing clock, in request order, so
        the FIFO order is the order workflows were started in. An idempotency key belongs
        to its workflow name: a start with a known name and key returns that workflow if
        the arguments are the same and is refused (:class:`AlreadyExists`) if they are not.
        """
        keyed = {(r.name, r.idempotency_key) for r in requests if r.idempotency_key}
        known: dict[tuple[str, str], _KeyedStart] = {}
        if keyed:
            # Both IN lists narrow the index scan; the exact pairs are picked out here.
            rows = connection.execute(
                select(workflows.c.name, workflows.c.idempotency_key, workflows.c.id, workflows.c.args).where(
                    workflows.c.idempotency_key.in_(sorted({key for _, key in keyed})),
                    workflows.c.name.in_(sorted({name for name, _ in keyed})),
                )
            )
            known = {
                (row.name, row.idempotency_key): _KeyedStart(row.id, row.args)
                for row in rows
                if (row.name, row.idempotency_key) in keyed
            }
        started: list[Started] = []
        workflow_rows: list[dict[str, object]] = []
        replay_rows: list[dict[str, object]] = []
        for index, request in enumerate(requests):
            key = request.idempotency_key
            earlier = known.get((request.name, key)) if key else None
            if earlier is not None:
                _check_same_arguments(earlier, request, index if len(requests) > 1 else None)
                started.append(Started(earlier.workflow_id, True))
                continue
            workflow_id = uuid.uuid4().hex
            created_at = self._clock.next()
            shard = shard_for(workflow_id, self._shard_count)
            workflow_rows.append(
                {
                    "id": workflow_id,
                    "name": request.name,
                    "status": WorkflowStatus.RUNNING,
                    "shard": shard,
                    "args": request.args_json,
                    "idempotency_key": key,
                    "created_at": created_at,
                    "step_count": 0,
                    "activations": 0,
                    "trace_context": request.trace_context,
                }
            )
            replay_rows.append(
                {
                    "workflow_id": workflow_id,
                    "shard": shard,
                    "workflow_created_at": created_at,
                    "enqueued_at": created_at,
                }
            )
            if key:
                known[(request.name, key)] = _KeyedStart(workflow_id, request.args_json)
            started.append(Started(workflow_id, False))
        if workflow_rows:
            connection.execute(insert(workflows), workflow_rows)
            connection.execute(insert(replay_queue), replay_rows)
            note_replays_enqueued(connection)
        return started

    def cancel(self, connection: Connection, workflow_id: str, reason: str, now: int) -> WorkflowRecord:
        row = connection.execute(select(workflows.c.status).where(workflows.c.id == workflow_id)).first()
        if row is None:
            raise NotFound(f"no workflow with id {workflow_id!r}")
        if row.status != WorkflowStatus.RUNNING:
            raise FailedPrecondition(
                f"workflow {workflow_id} already finished ({row.status}); nothing to cancel"
            )
        cancel_workflows(connection, [workflow_id], reason, now)
        return self.get(connection, workflow_id, include_steps=False)

    @staticmethod
    def count_selected(
        connection: Connection, selection: WorkflowSelection, limit: int, sample_size: int
    ) -> tuple[int, list[str]]:
        """How many workflows ``selection`` holds (at most ``limit``; 0: no limit), and the oldest ids."""
        query = selection.oldest_first()
        limited = query.limit(limit) if limit > 0 else query
        count = connection.execute(select(func.count()).select_from(limited.subquery())).scalar_one()
        sample = min(sample_size, limit) if limit > 0 else sample_size
        return count, list(connection.execute(query.limit(sample)).scalars())

    @staticmethod
    def cancel_selected(
        connection: Connection, selection: WorkflowSelection, limit: int, reason: str, now: int
    ) -> list[str]:
        """Cancel the oldest ``limit`` workflows of ``selection``; returns their ids."""
        ids = list(connection.execute(selection.oldest_first().limit(limit)).scalars())
        return cancel_workflows(connection, ids, reason, now)

    def get(self, connection: Connection, workflow_id: str, *, include_steps: bool) -> WorkflowRecord:
        row = connection.execute(select(*WORKFLOW_COLUMNS).where(workflows.c.id == workflow_id)).first()
        if row is None:
            raise NotFound(f"no workflow with id {workflow_id!r}")
        step_records: tuple[StepRecord, ...] = ()
        if include_steps:
            rows = connection.execute(
                select(steps).where(steps.c.workflow_id == workflow_id).order_by(steps.c.number)
            ).all()
            args = expanded_args(connection, {s.number: (workflow_id, s.args) for s in rows})
            step_records = tuple(step_record(s, args[s.number]) for s in rows)
        record = workflow_record(row, step_records)
        if include_steps:
            record = dataclasses.replace(record, children=tuple(Children.of(connection, workflow_id)))
        return record

    def list(
        self,
        connection: Connection,
        *,
        statuses: Collection[WorkflowStatus],
        name: str | None,
        page_size: int,
        page_token: str | None,
        newest_first: bool,
    ) -> tuple[list[WorkflowRecord], str | None]:
        """One page in creation order; the token is the last creation time seen (unique per workflow)."""
        query = select(*WORKFLOW_COLUMNS)
        if statuses:
            query = query.where(workflows.c.status.in_([s.value for s in statuses]))
        if name:
            query = query.where(workflows.c.name == name)
        if page_token:
            after = _decode_page_token(page_token)
            query = query.where(
                workflows.c.created_at < after if newest_first else workflows.c.created_at > after
            )
        order = workflows.c.created_at.desc() if newest_first else workflows.c.created_at.asc()
        rows = connection.execute(query.order_by(order).limit(page_size + 1)).all()
        records = [workflow_record(row) for row in rows[:page_size]]
        next_token = _encode_page_token(records[-1].created_at) if len(rows) > page_size else None
        return records, next_token

    @staticmethod
    def count_by_status(connection: Connection, name: str | None = None) -> dict[str, int]:
        """Workflows per status (of one name), from the trigger-kept ``workflow_counts``:
        a few rows per name, however many workflows there are."""
        query = select(workflow_counts.c.status, func.sum(workflow_counts.c.total)).group_by(
            workflow_counts.c.status
        )
        if name:
            query = query.where(workflow_counts.c.name == name)
        return {status: int(count) for status, count in connection.execute(query) if count}


def _encode_page_token(created_at: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{created_at}".encode()).decode()


def _decode_page_token(token: str) -> int:
    try:
        version, value = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        if version != "v1":
            raise ValueError(version)
        created_at = int(value)
        if not -(2**63) <= created_at < 2**63:  # a BIGINT bound: outside it no database compares it
            raise ValueError(value)
        return created_at
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"page_token {token!r} is not one this server issued") from error
