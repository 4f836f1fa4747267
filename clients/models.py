"""What the client returns: plain dataclasses with decoded JSON and real datetimes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from conveyor.v1 import admin_service_pb2, common_pb2, workflow_service_pb2


class WorkflowStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not WorkflowStatus.RUNNING

    def to_wire(self) -> common_pb2.WorkflowStatus:
        return _STATUS_TO_WIRE[self]

    @classmethod
    def from_wire(cls, value: int) -> WorkflowStatus:
        return cls[common_pb2.WorkflowStatus.Name(value).removeprefix("WORKFLOW_STATUS_")]


_STATUS_TO_WIRE = {
    WorkflowStatus.RUNNING: common_pb2.WORKFLOW_STATUS_RUNNING,
    WorkflowStatus.COMPLETED: common_pb2.WORKFLOW_STATUS_COMPLETED,
    WorkflowStatus.FAILED: common_pb2.WORKFLOW_STATUS_FAILED,
    WorkflowStatus.CANCELLED: common_pb2.WORKFLOW_STATUS_CANCELLED,
}


def _time(value: Timestamp) -> datetime | None:
    if value.seconds == 0 and value.nanos == 0:
        return None
    return datetime.fromtimestamp(value.seconds + value.nanos / 1e9, tz=UTC)


def _json(text: str) -> Any:
    return json.loads(text) if text else None


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    """``STEP_WAIT_RETRY_BACKOFF`` → ``retry_backoff``."""
    return str(enum.Name(value)).removeprefix(prefix).lower()


@dataclass(frozen=True)
class Step:
    number: int
    kind: str
    name: str
    status: str
    attempt: int
    args: Any
    result: Any
    error: str
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    executor_id: str

    @classmethod
    def from_wire(cls, step: common_pb2.Step) -> Step:
        return cls(
            number=step.number,
            kind=_enum_name(common_pb2.StepKind, step.kind, "STEP_KIND_"),
            name=step.name,
            status=_enum_name(common_pb2.StepStatus, step.status, "STEP_STATUS_"),
            attempt=step.attempt,
            args=_json(step.args_json),
            result=_json(step.result_json),
            error=step.error,
            created_at=_time(step.created_at),
            started_at=_time(step.started_at),
            completed_at=_time(step.completed_at),
            executor_id=step.executor_id,
        )


@dataclass(frozen=True)
class Workflow:
    id: str
    name: str
    status: WorkflowStatus
    args: Any
    result: Any
    error: str
    shard: int
    idempotency_key: str
    created_at: datetime | None
    completed_at: datetime | None
    step_count: int
    steps: tuple[Step, ...]
    #: For a child workflow: its parent, and the parent's step waiting for it ("" / 0 for a root).
    parent_workflow_id: str = ""
    parent_step_number: int = 0
    #: With steps: the children it started, in order.
    children: tuple[ChildWorkflow, ...] = ()

    @classmethod
    def from_wire(cls, workflow: workflow_service_pb2.Workflow) -> Workflow:
        return cls(
            id=workflow.id,
            name=workflow.name,
            status=WorkflowStatus.from_wire(workflow.status),
            args=_json(workflow.args_json),
            result=_json(workflow.result_json),
            error=workflow.error,
            shard=workflow.shard,
            idempotency_key=workflow.idempotency_key,
            created_at=_time(workflow.created_at),
            completed_at=_time(workflow.completed_at),
            step_count=workflow.step_count,
            steps=tuple(Step.from_wire(step) for step in workflow.steps),
            parent_workflow_id=workflow.parent_workflow_id,
            parent_step_number=workflow.parent_step_number,
            children=tuple(
                ChildWorkflow(c.workflow_id, c.name, WorkflowStatus.from_wire(c.status), c.parent_step_number)
                for c in workflow.children
            ),
        )

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, once finished."""
        if self.created_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.created_at).total_seconds()


@dataclass(frozen=True)
class WatchEvent:
    """One message of ``WatchWorkflow``: the snapshot, a step's change, or the finish."""

    #: ``snapshot``, ``step_started``, ``step_completed``, ``step_failed``, ``step_cancelled``
    #: or ``workflow_finished``.
    kind: str
    #: The workflow as of this event (its steps only in the snapshot).
    workflow: Workflow
    step: Step | None = None

    @classmethod
    def from_wire(cls, message: workflow_service_pb2.WatchWorkflowResponse) -> WatchEvent:
        kind = (
            workflow_service_pb2.WatchEventKind.Name(message.kind).removeprefix("WATCH_EVENT_KIND_").lower()
        )
        step = Step.from_wire(message.step) if message.HasField("step") else None
        return cls(kind, Workflow.from_wire(message.workflow), step)


@dataclass(frozen=True)
class ChildWorkflow:
    workflow_id: str
    name: str
    status: WorkflowStatus
    parent_step_number: int


@dataclass(frozen=True)
class Started:
    workflow_id: str
    already_existed: bool


@dataclass(frozen=True)
class SignalSent:
    """What SignalWorkflow did with a signal."""

    workflow_id: str
    name: str
    #: A waiting ``ctx.wait_for_signal`` took it at once; otherwise it is buffered for the next wait.
    delivered: bool
    #: The idempotency key matched an earlier signal: nothing new was stored.
    duplicate: bool


@dataclass(frozen=True)
class StepExplanation:
    """What one step in progress waits for; ``text`` says it in words."""

    number: int
    name: str
    kind: str
    #: "llm" or the handler kind; empty for sleeps.
    task_kind: str
    #: queued, no_executor, running, executor_lost, retry_backoff, rate_limited, sleeping or signal.
    wait: str
    text: str
    shard: int
    tasks_ahead: int
    shard_executors: tuple[str, ...]
    executor_id: str
    since_last_heartbeat: float | None
    available_at: datetime | None
    claimed_at: datetime | None
    #: When the coordinator takes a running attempt back if it has not reported (running steps).
    deadline_at: datetime | None
    attempt: int
    max_attempts: int
    last_error: str

    @classmethod
    def from_wire(cls, step: workflow_service_pb2.StepExplanation) -> StepExplanation:
        return cls(
            number=step.step_number,
            name=step.step_name,
            kind=_enum_name(common_pb2.StepKind, step.kind, "STEP_KIND_"),
            task_kind=step.task_kind,
            wait=_enum_name(workflow_service_pb2.StepWait, step.wait, "STEP_WAIT_"),
            text=step.explanation,
            shard=step.shard,
            tasks_ahead=step.tasks_ahead,
            shard_executors=tuple(step.shard_executors),
            executor_id=step.executor_id,
            since_last_heartbeat=(
                step.since_last_heartbeat.ToTimedelta().total_seconds()
                if step.HasField("since_last_heartbeat")
                else None
            ),
            available_at=_time(step.available_at),
            claimed_at=_time(step.claimed_at),
            deadline_at=_time(step.deadline_at),
            attempt=step.attempt,
            max_attempts=step.max_attempts,
            last_error=step.last_error,
        )


@dataclass(frozen=True)
class Explanation:
    """Why a workflow is where it is (``ExplainWorkflow``)."""

    workflow: Workflow
    #: steps_in_progress, replay_queued, code_not_loaded, stranded or finished.
    situation: str
    #: The whole answer in plain words.
    summary: str
    steps: tuple[StepExplanation, ...]
    replay_queue_ahead: int

    @classmethod
    def from_wire(cls, response: workflow_service_pb2.ExplainWorkflowResponse) -> Explanation:
        return cls(
            workflow=Workflow.from_wire(response.workflow),
            situation=_enum_name(
                workflow_service_pb2.WorkflowSituation, response.situation, "WORKFLOW_SITUATION_"
            ),
            summary=response.summary,
            steps=tuple(StepExplanation.from_wire(step) for step in response.steps),
            replay_queue_ahead=response.replay_queue_ahead,
        )


@dataclass(frozen=True)
class BulkCancel:
    """What ``CancelWorkflows`` matched and cancelled (nothing cancelled on a dry run)."""

    matched: int
    cancelled: int
    #: The oldest matching workflows, to check the filter picked the right ones.
    sample_workflow_ids: tuple[str, ...]

    @classmethod
    def from_wire(cls, response: admin_service_pb2.CancelWorkflowsResponse) -> BulkCancel:
        return cls(response.matched, response.cancelled, tuple(response.sample_workflow_ids))


@dataclass(frozen=True)
class Purge:
    """What ``PurgeWorkflows`` matched and deleted (nothing deleted on a dry run)."""

    matched: int
    purged: int
    #: The first matching workflows by finish time, to check the filter picked the right ones.
    sample_workflow_ids: tuple[str, ...]

    @classmethod
    def from_wire(cls, response: admin_service_pb2.PurgeWorkflowsResponse) -> Purge:
        return cls(response.matched, response.purged, tuple(response.sample_workflow_ids))
