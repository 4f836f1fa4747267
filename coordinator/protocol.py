"""Translation between the wire types (``conveyor.v1``) and the coordinator's own."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from conveyor import tracing
from conveyor.errors import InvalidArgument
from conveyor.v1 import common_pb2, executor_service_pb2, workflow_service_pb2

from .model import ErrorClass, StepKind, StepStatus, WorkflowStatus
from .store.queue import ClaimedTask
from .store.workflows import StepRecord, WorkflowRecord

WORKFLOW_STATUS_TO_WIRE = {
    WorkflowStatus.RUNNING: common_pb2.WORKFLOW_STATUS_RUNNING,
    WorkflowStatus.COMPLETED: common_pb2.WORKFLOW_STATUS_COMPLETED,
    WorkflowStatus.FAILED: common_pb2.WORKFLOW_STATUS_FAILED,
    WorkflowStatus.CANCELLED: common_pb2.WORKFLOW_STATUS_CANCELLED,
}
WORKFLOW_STATUS_FROM_WIRE = {wire: status for status, wire in WORKFLOW_STATUS_TO_WIRE.items()}

STEP_STATUS_TO_WIRE = {
    StepStatus.RUNNING: common_pb2.STEP_STATUS_RUNNING,
    StepStatus.COMPLETED: common_pb2.STEP_STATUS_COMPLETED,
    StepStatus.FAILED: common_pb2.STEP_STATUS_FAILED,
    StepStatus.CANCELLED: common_pb2.STEP_STATUS_CANCELLED,
}

STEP_KIND_TO_WIRE = {
    StepKind.LLM: common_pb2.STEP_KIND_LLM,
    StepKind.TASK: common_pb2.STEP_KIND_TASK,
    StepKind.SLEEP: common_pb2.STEP_KIND_SLEEP,
    StepKind.NOW: common_pb2.STEP_KIND_NOW,
    StepKind.RANDOM: common_pb2.STEP_KIND_RANDOM,
    StepKind.SIGNAL: common_pb2.STEP_KIND_SIGNAL,
    StepKind.PATCH: common_pb2.STEP_KIND_PATCH,
    StepKind.CHILD: common_pb2.STEP_KIND_CHILD,
}

ERROR_CLASS_FROM_WIRE = {
    common_pb2.ERROR_CLASS_RETRYABLE: ErrorClass.RETRYABLE,
    common_pb2.ERROR_CLASS_NON_RETRYABLE: ErrorClass.NON_RETRYABLE,
    common_pb2.ERROR_CLASS_RATE_LIMITED: ErrorClass.RATE_LIMITED,
}


def timestamp(us: int | None) -> Timestamp | None:
    if us is None:
        return None
    seconds, micros = divmod(us, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


#: The seconds a protobuf Timestamp may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
TIMESTAMP_SECONDS = range(-62_135_596_800, 253_402_300_800)


def from_timestamp(value: Timestamp, field: str = "timestamp") -> int | None:
    """Microseconds, or None for an unset timestamp; InvalidArgument for one no clock can show."""
    if value.seconds == 0 and value.nanos == 0:
        return None
    if value.seconds not in TIMESTAMP_SECONDS or not 0 <= value.nanos < 1_000_000_000:
        raise InvalidArgument(
            f"{field} ({value.seconds}s + {value.nanos}ns) is not a valid timestamp: "
            "it must lie between the years 1 and 9999"
        )
    return value.seconds * 1_000_000 + value.nanos // 1000


def duration(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def from_duration(value: Duration) -> float:
    return value.seconds + value.nanos / 1e9


def step_to_wire(step: StepRecord) -> common_pb2.Step:
    return common_pb2.Step(
        number=step.number,
        kind=STEP_KIND_TO_WIRE[step.kind],
        name=step.name,
        status=STEP_STATUS_TO_WIRE[step.status],
        attempt=step.attempt,
        args_json=step.args_json,
        result_json=step.result_json or "",
        error=step.error or "",
        created_at=timestamp(step.created_at),
        started_at=timestamp(step.started_at),
        completed_at=timestamp(step.completed_at),
        executor_id=step.executor_id or "",
    )


def workflow_to_wire(record: WorkflowRecord) -> workflow_service_pb2.Workflow:
    return workflow_service_pb2.Workflow(
        id=record.id,
        name=record.name,
        status=WORKFLOW_STATUS_TO_WIRE[record.status],
        args_json=record.args_json,
        result_json=record.result_json or "",
        error=record.error or "",
        shard=record.shard,
        idempotency_key=record.idempotency_key or "",
        created_at=timestamp(record.created_at),
        completed_at=timestamp(record.completed_at),
        step_count=record.step_count,
        steps=[step_to_wire(step) for step in record.steps],
        parent_workflow_id=record.parent_id or "",
        parent_step_number=record.parent_step or 0,
        children=[
            workflow_service_pb2.ChildWorkflow(
                workflow_id=child.workflow_id,
                name=child.name,
                status=WORKFLOW_STATUS_TO_WIRE[child.status],
                parent_step_number=child.parent_step,
            )
            for child in record.children
        ],
    )


def tasks_to_wire(tasks: Sequence[ClaimedTask]) -> executor_service_pb2.ClaimTasksResponse:
    """One batch of claimed tasks for an executor's stream.

    Each task is written straight into the batch: building a ``Task`` and handing a list of
    them to the constructor makes protobuf copy every one (half the cost per task).
    """
    message = executor_service_pb2.ClaimTasksResponse()
    add = message.tasks.tasks.add
    for task in tasks:
        add(
            task_id=task.task_id,
            fencing_token=task.fencing_token,
            workflow_id=task.workflow_id,
            step_number=task.step_number,
            kind=task.kind,
            name=task.name,
            payload_json=task.payload_json,
            attempt=task.attempt,
            max_attempts=task.max_attempts,
            shard=task.shard,
            timeout=duration(task.timeout) if task.timeout else None,
            trace_context=tracing.decode(task.trace_context),
        )
    return message
