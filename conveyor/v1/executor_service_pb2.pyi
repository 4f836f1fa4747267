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

class ResultDisposition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_DISPOSITION_UNSPECIFIED: _ClassVar[ResultDisposition]
    RESULT_DISPOSITION_ACCEPTED: _ClassVar[ResultDisposition]
    RESULT_DISPOSITION_DUPLICATE: _ClassVar[ResultDisposition]
    RESULT_DISPOSITION_STALE: _ClassVar[ResultDisposition]
    RESULT_DISPOSITION_REFUSED: _ClassVar[ResultDisposition]
RESULT_DISPOSITION_UNSPECIFIED: ResultDisposition
RESULT_DISPOSITION_ACCEPTED: ResultDisposition
RESULT_DISPOSITION_DUPLICATE: ResultDisposition
RESULT_DISPOSITION_STALE: ResultDisposition
RESULT_DISPOSITION_REFUSED: ResultDisposition

class ClaimTasksRequest(_message.Message):
    __slots__ = ("hello", "credit", "heartbeat", "draining")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    credit: Credit
    heartbeat: Heartbeat
    draining: Draining
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., draining: _Optional[_Union[Draining, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("executor_id", "epoch", "task_kinds", "capacity", "held_task_ids", "version", "free_slots", "draining")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TASK_KINDS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HELD_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    epoch: int
    task_kinds: _containers.RepeatedScalarFieldContainer[str]
    capacity: int
    held_task_ids: _containers.RepeatedScalarFieldContainer[int]
    version: str
    free_slots: int
    draining: bool
    def __init__(self, executor_id: _Optional[str] = ..., epoch: _Optional[int] = ..., task_kinds: _Optional[_Iterable[str]] = ..., capacity: _Optional[int] = ..., held_task_ids: _Optional[_Iterable[int]] = ..., version: _Optional[str] = ..., free_slots: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("slots",)
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    slots: int
    def __init__(self, slots: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("running_tasks",)
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    running_tasks: int
    def __init__(self, running_tasks: _Optional[int] = ...) -> None: ...

class Draining(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ClaimTasksResponse(_message.Message):
    __slots__ = ("welcome", "tasks", "shards", "drain", "cancel")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    tasks: TaskBatch
    shards: ShardAssignment
    drain: Drain
    cancel: CancelTasks
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., tasks: _Optional[_Union[TaskBatch, _Mapping]] = ..., shards: _Optional[_Union[ShardAssignment, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., cancel: _Optional[_Union[CancelTasks, _Mapping]] = ...) -> None: ...

class CancelTasks(_message.Message):
    __slots__ = ("tasks", "reason")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskAttempt]
    reason: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskAttempt, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class TaskAttempt(_message.Message):
    __slots__ = ("task_id", "fencing_token")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    fencing_token: int
    def __init__(self, task_id: _Optional[int] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("epoch", "heartbeat_interval", "lease_ttl", "max_batch_size", "max_payload_bytes", "shard_count")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    heartbeat_interval: _duration_pb2.Duration
    lease_ttl: _duration_pb2.Duration
    max_batch_size: int
    max_payload_bytes: int
    shard_count: int
    def __init__(self, epoch: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_batch_size: _Optional[int] = ..., max_payload_bytes: _Optional[int] = ..., shard_count: _Optional[int] = ...) -> None: ...

class TaskBatch(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "fencing_token", "workflow_id", "step_number", "kind", "name", "payload_json", "attempt", "max_attempts", "shard", "timeout", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_NUMBER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
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
    timeout: _duration_pb2.Duration
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, task_id: _Optional[int] = ..., fencing_token: _Optional[int] = ..., workflow_id: _Optional[str] = ..., step_number: _Optional[int] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., payload_json: _Optional[str] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., shard: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ShardAssignment(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, shards: _Optional[_Iterable[int]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("epoch", "reason")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    reason: str
    def __init__(self, epoch: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RecordResultsRequest(_message.Message):
    __slots__ = ("executor_id", "results")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    def __init__(self, executor_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "fencing_token", "result_json", "failure", "started_at", "finished_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    fencing_token: int
    result_json: str
    failure: TaskFailure
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, task_id: _Optional[int] = ..., fencing_token: _Optional[int] = ..., result_json: _Optional[str] = ..., failure: _Optional[_Union[TaskFailure, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TaskFailure(_message.Message):
    __slots__ = ("error_class", "message", "retry_after")
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    error_class: _common_pb2.ErrorClass
    message: str
    retry_after: _duration_pb2.Duration
    def __init__(self, error_class: _Optional[_Union[_common_pb2.ErrorClass, str]] = ..., message: _Optional[str] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RecordResultsResponse(_message.Message):
    __slots__ = ("dispositions", "reasons")
    DISPOSITIONS_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    dispositions: _containers.RepeatedScalarFieldContainer[ResultDisposition]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dispositions: _Optional[_Iterable[_Union[ResultDisposition, str]]] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...
