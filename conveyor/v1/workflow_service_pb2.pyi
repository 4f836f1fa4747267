import datetime

from conveyor.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkflowSituation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_SITUATION_UNSPECIFIED: _ClassVar[WorkflowSituation]
    WORKFLOW_SITUATION_STEPS_IN_PROGRESS: _ClassVar[WorkflowSituation]
    WORKFLOW_SITUATION_REPLAY_QUEUED: _ClassVar[WorkflowSituation]
    WORKFLOW_SITUATION_CODE_NOT_LOADED: _ClassVar[WorkflowSituation]
    WORKFLOW_SITUATION_STRANDED: _ClassVar[WorkflowSituation]
    WORKFLOW_SITUATION_FINISHED: _ClassVar[WorkflowSituation]

class StepWait(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_WAIT_UNSPECIFIED: _ClassVar[StepWait]
    STEP_WAIT_QUEUED: _ClassVar[StepWait]
    STEP_WAIT_NO_EXECUTOR: _ClassVar[StepWait]
    STEP_WAIT_RUNNING: _ClassVar[StepWait]
    STEP_WAIT_EXECUTOR_LOST: _ClassVar[StepWait]
    STEP_WAIT_RETRY_BACKOFF: _ClassVar[StepWait]
    STEP_WAIT_RATE_LIMITED: _ClassVar[StepWait]
    STEP_WAIT_SLEEPING: _ClassVar[StepWait]
    STEP_WAIT_SIGNAL: _ClassVar[StepWait]
    STEP_WAIT_CHILD: _ClassVar[StepWait]

class WatchEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_EVENT_KIND_UNSPECIFIED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_SNAPSHOT: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_STEP_STARTED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_STEP_COMPLETED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_STEP_FAILED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_STEP_CANCELLED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_WORKFLOW_FINISHED: _ClassVar[WatchEventKind]
WORKFLOW_SITUATION_UNSPECIFIED: WorkflowSituation
WORKFLOW_SITUATION_STEPS_IN_PROGRESS: WorkflowSituation
WORKFLOW_SITUATION_REPLAY_QUEUED: WorkflowSituation
WORKFLOW_SITUATION_CODE_NOT_LOADED: WorkflowSituation
WORKFLOW_SITUATION_STRANDED: WorkflowSituation
WORKFLOW_SITUATION_FINISHED: WorkflowSituation
STEP_WAIT_UNSPECIFIED: StepWait
STEP_WAIT_QUEUED: StepWait
STEP_WAIT_NO_EXECUTOR: StepWait
STEP_WAIT_RUNNING: StepWait
STEP_WAIT_EXECUTOR_LOST: StepWait
STEP_WAIT_RETRY_BACKOFF: StepWait
STEP_WAIT_RATE_LIMITED: StepWait
STEP_WAIT_SLEEPING: StepWait
STEP_WAIT_SIGNAL: StepWait
STEP_WAIT_CHILD: StepWait
WATCH_EVENT_KIND_UNSPECIFIED: WatchEventKind
WATCH_EVENT_KIND_SNAPSHOT: WatchEventKind
WATCH_EVENT_KIND_STEP_STARTED: WatchEventKind
WATCH_EVENT_KIND_STEP_COMPLETED: WatchEventKind
WATCH_EVENT_KIND_STEP_FAILED: WatchEventKind
WATCH_EVENT_KIND_STEP_CANCELLED: WatchEventKind
WATCH_EVENT_KIND_WORKFLOW_FINISHED: WatchEventKind

class SignalWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "name", "payload_json", "idempotency_key")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    name: str
    payload_json: str
    idempotency_key: str
    def __init__(self, workflow_id: _Optional[str] = ..., name: _Optional[str] = ..., payload_json: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SignalWorkflowResponse(_message.Message):
    __slots__ = ("delivered", "duplicate")
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    delivered: bool
    duplicate: bool
    def __init__(self, delivered: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class StartWorkflowRequest(_message.Message):
    __slots__ = ("name", "args_json", "idempotency_key", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    args_json: str
    idempotency_key: str
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., args_json: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StartWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id", "already_existed")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    already_existed: bool
    def __init__(self, workflow_id: _Optional[str] = ..., already_existed: _Optional[bool] = ...) -> None: ...

class StartWorkflowsRequest(_message.Message):
    __slots__ = ("workflows",)
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[StartWorkflowRequest]
    def __init__(self, workflows: _Optional[_Iterable[_Union[StartWorkflowRequest, _Mapping]]] = ...) -> None: ...

class StartWorkflowsResponse(_message.Message):
    __slots__ = ("workflows",)
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[StartWorkflowResponse]
    def __init__(self, workflows: _Optional[_Iterable[_Union[StartWorkflowResponse, _Mapping]]] = ...) -> None: ...

class GetWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "include_steps")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_STEPS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    include_steps: bool
    def __init__(self, workflow_id: _Optional[str] = ..., include_steps: _Optional[bool] = ...) -> None: ...

class Workflow(_message.Message):
    __slots__ = ("id", "name", "status", "args_json", "result_json", "error", "shard", "idempotency_key", "created_at", "completed_at", "step_count", "steps", "parent_workflow_id", "parent_step_number", "children")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PARENT_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_STEP_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    status: _common_pb2.WorkflowStatus
    args_json: str
    result_json: str
    error: str
    shard: int
    idempotency_key: str
    created_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    step_count: int
    steps: _containers.RepeatedCompositeFieldContainer[_common_pb2.Step]
    parent_workflow_id: str
    parent_step_number: int
    children: _containers.RepeatedCompositeFieldContainer[ChildWorkflow]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.WorkflowStatus, str]] = ..., args_json: _Optional[str] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ..., shard: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step_count: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[_common_pb2.Step, _Mapping]]] = ..., parent_workflow_id: _Optional[str] = ..., parent_step_number: _Optional[int] = ..., children: _Optional[_Iterable[_Union[ChildWorkflow, _Mapping]]] = ...) -> None: ...

class ChildWorkflow(_message.Message):
    __slots__ = ("workflow_id", "name", "status", "parent_step_number")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PARENT_STEP_NUMBER_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    name: str
    status: _common_pb2.WorkflowStatus
    parent_step_number: int
    def __init__(self, workflow_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.WorkflowStatus, str]] = ..., parent_step_number: _Optional[int] = ...) -> None: ...

class GetWorkflowResponse(_message.Message):
    __slots__ = ("workflow",)
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    workflow: Workflow
    def __init__(self, workflow: _Optional[_Union[Workflow, _Mapping]] = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ("statuses", "name", "page_size", "page_token", "newest_first")
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[_common_pb2.WorkflowStatus]
    name: str
    page_size: int
    page_token: str
    newest_first: bool
    def __init__(self, statuses: _Optional[_Iterable[_Union[_common_pb2.WorkflowStatus, str]]] = ..., name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows", "next_page_token")
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[Workflow]
    next_page_token: str
    def __init__(self, workflows: _Optional[_Iterable[_Union[Workflow, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CountWorkflowsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CountWorkflowsResponse(_message.Message):
    __slots__ = ("by_status",)
    class ByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    by_status: _containers.ScalarMap[str, int]
    def __init__(self, by_status: _Optional[_Mapping[str, int]] = ...) -> None: ...

class CancelWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "reason")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    reason: str
    def __init__(self, workflow_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelWorkflowResponse(_message.Message):
    __slots__ = ("workflow",)
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    workflow: Workflow
    def __init__(self, workflow: _Optional[_Union[Workflow, _Mapping]] = ...) -> None: ...

class ExplainWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class StepExplanation(_message.Message):
    __slots__ = ("step_number", "step_name", "kind", "task_kind", "wait", "explanation", "shard", "tasks_ahead", "shard_executors", "executor_id", "since_last_heartbeat", "available_at", "claimed_at", "attempt", "max_attempts", "last_error", "deadline_at")
    STEP_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_KIND_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TASKS_AHEAD_FIELD_NUMBER: _ClassVar[int]
    SHARD_EXECUTORS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AT_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_AT_FIELD_NUMBER: _ClassVar[int]
    step_number: int
    step_name: str
    kind: _common_pb2.StepKind
    task_kind: str
    wait: StepWait
    explanation: str
    shard: int
    tasks_ahead: int
    shard_executors: _containers.RepeatedScalarFieldContainer[str]
    executor_id: str
    since_last_heartbeat: _duration_pb2.Duration
    available_at: _timestamp_pb2.Timestamp
    claimed_at: _timestamp_pb2.Timestamp
    attempt: int
    max_attempts: int
    last_error: str
    deadline_at: _timestamp_pb2.Timestamp
    def __init__(self, step_number: _Optional[int] = ..., step_name: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.StepKind, str]] = ..., task_kind: _Optional[str] = ..., wait: _Optional[_Union[StepWait, str]] = ..., explanation: _Optional[str] = ..., shard: _Optional[int] = ..., tasks_ahead: _Optional[int] = ..., shard_executors: _Optional[_Iterable[str]] = ..., executor_id: _Optional[str] = ..., since_last_heartbeat: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., available_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., claimed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., deadline_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExplainWorkflowResponse(_message.Message):
    __slots__ = ("workflow", "situation", "summary", "steps", "replay_queue_ahead", "generated_at")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    SITUATION_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_QUEUE_AHEAD_FIELD_NUMBER: _ClassVar[int]
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    workflow: Workflow
    situation: WorkflowSituation
    summary: str
    steps: _containers.RepeatedCompositeFieldContainer[StepExplanation]
    replay_queue_ahead: int
    generated_at: _timestamp_pb2.Timestamp
    def __init__(self, workflow: _Optional[_Union[Workflow, _Mapping]] = ..., situation: _Optional[_Union[WorkflowSituation, str]] = ..., summary: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepExplanation, _Mapping]]] = ..., replay_queue_ahead: _Optional[int] = ..., generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class WatchWorkflowResponse(_message.Message):
    __slots__ = ("kind", "workflow", "step")
    KIND_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    kind: WatchEventKind
    workflow: Workflow
    step: _common_pb2.Step
    def __init__(self, kind: _Optional[_Union[WatchEventKind, str]] = ..., workflow: _Optional[_Union[Workflow, _Mapping]] = ..., step: _Optional[_Union[_common_pb2.Step, _Mapping]] = ...) -> None: ...
