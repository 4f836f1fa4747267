"""What the client returns: plain dataclasses with decoded JSON and real datetimes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from conveyor.v1 import common_pb2, workflow_service_pb2


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
            kind=common_pb2.StepKind.Name(step.kind).removeprefix("STEP_KIND_").lower(),
            name=step.name,
            status=common_pb2.StepStatus.Name(step.status).removeprefix("STEP_STATUS_").lower(),
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
        )

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, once finished."""
        if self.created_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.created_at).total_seconds()


@dataclass(frozen=True)
class Started:
    workflow_id: str
    already_existed: bool
