import datetime

from conveyor.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailPendingTasksRequest(_message.Message):
    __slots__ = ("shards", "limit", "reason")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    shards: _common_pb2.ShardSelector
    limit: int
    reason: str
    def __init__(self, shards: _Optional[_Union[_common_pb2.ShardSelector, _Mapping]] = ..., limit: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class FailPendingTasksResponse(_message.Message):
    __slots__ = ("failed_tasks",)
    FAILED_TASKS_FIELD_NUMBER: _ClassVar[int]
    failed_tasks: int
    def __init__(self, failed_tasks: _Optional[int] = ...) -> None: ...

class BumpEpochRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class BumpEpochResponse(_message.Message):
    __slots__ = ("epoch", "draining_executors")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    DRAINING_EXECUTORS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    draining_executors: int
    def __init__(self, epoch: _Optional[int] = ..., draining_executors: _Optional[int] = ...) -> None: ...

class ClearReplayQueueRequest(_message.Message):
    __slots__ = ("shards", "limit", "reason")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    shards: _common_pb2.ShardSelector
    limit: int
    reason: str
    def __init__(self, shards: _Optional[_Union[_common_pb2.ShardSelector, _Mapping]] = ..., limit: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ClearReplayQueueResponse(_message.Message):
    __slots__ = ("cleared_entries", "cancelled_workflows")
    CLEARED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    cleared_entries: int
    cancelled_workflows: int
    def __init__(self, cleared_entries: _Optional[int] = ..., cancelled_workflows: _Optional[int] = ...) -> None: ...

class ClearTaskQueueRequest(_message.Message):
    __slots__ = ("shards", "limit", "reason")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    shards: _common_pb2.ShardSelector
    limit: int
    reason: str
    def __init__(self, shards: _Optional[_Union[_common_pb2.ShardSelector, _Mapping]] = ..., limit: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ClearTaskQueueResponse(_message.Message):
    __slots__ = ("cleared_tasks", "cancelled_workflows")
    CLEARED_TASKS_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    cleared_tasks: int
    cancelled_workflows: int
    def __init__(self, cleared_tasks: _Optional[int] = ..., cancelled_workflows: _Optional[int] = ...) -> None: ...

class DiagnoseRequest(_message.Message):
    __slots__ = ("max_violations",)
    MAX_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    max_violations: int
    def __init__(self, max_violations: _Optional[int] = ...) -> None: ...

class ShardStats(_message.Message):
    __slots__ = ("shard", "queued_tasks", "delayed_tasks", "claimed_tasks", "oldest_queued_age", "replay_queue_depth", "executor_id")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TASKS_FIELD_NUMBER: _ClassVar[int]
    DELAYED_TASKS_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_TASKS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_QUEUED_AGE_FIELD_NUMBER: _ClassVar[int]
    REPLAY_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    shard: int
    queued_tasks: int
    delayed_tasks: int
    claimed_tasks: int
    oldest_queued_age: _duration_pb2.Duration
    replay_queue_depth: int
    executor_id: str
    def __init__(self, shard: _Optional[int] = ..., queued_tasks: _Optional[int] = ..., delayed_tasks: _Optional[int] = ..., claimed_tasks: _Optional[int] = ..., oldest_queued_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., replay_queue_depth: _Optional[int] = ..., executor_id: _Optional[str] = ...) -> None: ...

class ExecutorInfo(_message.Message):
    __slots__ = ("executor_id", "epoch", "state", "shards", "task_kinds", "capacity", "claimed_tasks", "since_last_heartbeat", "connected_at")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    TASK_KINDS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_TASKS_FIELD_NUMBER: _ClassVar[int]
    SINCE_LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    epoch: int
    state: str
    shards: _containers.RepeatedScalarFieldContainer[int]
    task_kinds: _containers.RepeatedScalarFieldContainer[str]
    capacity: int
    claimed_tasks: int
    since_last_heartbeat: _duration_pb2.Duration
    connected_at: _timestamp_pb2.Timestamp
    def __init__(self, executor_id: _Optional[str] = ..., epoch: _Optional[int] = ..., state: _Optional[str] = ..., shards: _Optional[_Iterable[int]] = ..., task_kinds: _Optional[_Iterable[str]] = ..., capacity: _Optional[int] = ..., claimed_tasks: _Optional[int] = ..., since_last_heartbeat: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InvariantViolation(_message.Message):
    __slots__ = ("kind", "description", "count", "workflow_ids")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_IDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    description: str
    count: int
    workflow_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., description: _Optional[str] = ..., count: _Optional[int] = ..., workflow_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DiagnoseResponse(_message.Message):
    __slots__ = ("epoch", "shard_count", "shards", "replay_queue_depth", "executors", "violations", "workflows_by_status", "rejected_stale_results", "generated_at")
    class WorkflowsByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    EXECUTORS_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOWS_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_STALE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    shard_count: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardStats]
    replay_queue_depth: int
    executors: _containers.RepeatedCompositeFieldContainer[ExecutorInfo]
    violations: _containers.RepeatedCompositeFieldContainer[InvariantViolation]
    workflows_by_status: _containers.ScalarMap[str, int]
    rejected_stale_results: int
    generated_at: _timestamp_pb2.Timestamp
    def __init__(self, epoch: _Optional[int] = ..., shard_count: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardStats, _Mapping]]] = ..., replay_queue_depth: _Optional[int] = ..., executors: _Optional[_Iterable[_Union[ExecutorInfo, _Mapping]]] = ..., violations: _Optional[_Iterable[_Union[InvariantViolation, _Mapping]]] = ..., workflows_by_status: _Optional[_Mapping[str, int]] = ..., rejected_stale_results: _Optional[int] = ..., generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CancelWorkflowsRequest(_message.Message):
    __slots__ = ("shards", "name", "started_before", "started_after", "limit", "dry_run", "reason")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STARTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    shards: _common_pb2.ShardSelector
    name: str
    started_before: _timestamp_pb2.Timestamp
    started_after: _timestamp_pb2.Timestamp
    limit: int
    dry_run: bool
    reason: str
    def __init__(self, shards: _Optional[_Union[_common_pb2.ShardSelector, _Mapping]] = ..., name: _Optional[str] = ..., started_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., dry_run: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelWorkflowsResponse(_message.Message):
    __slots__ = ("matched", "cancelled", "sample_workflow_ids")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_WORKFLOW_IDS_FIELD_NUMBER: _ClassVar[int]
    matched: int
    cancelled: int
    sample_workflow_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, matched: _Optional[int] = ..., cancelled: _Optional[int] = ..., sample_workflow_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PurgeWorkflowsRequest(_message.Message):
    __slots__ = ("finished_before", "statuses", "limit", "dry_run")
    FINISHED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    finished_before: _timestamp_pb2.Timestamp
    statuses: _containers.RepeatedScalarFieldContainer[_common_pb2.WorkflowStatus]
    limit: int
    dry_run: bool
    def __init__(self, finished_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., statuses: _Optional[_Iterable[_Union[_common_pb2.WorkflowStatus, str]]] = ..., limit: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PurgeWorkflowsResponse(_message.Message):
    __slots__ = ("matched", "purged", "sample_workflow_ids")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    PURGED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_WORKFLOW_IDS_FIELD_NUMBER: _ClassVar[int]
    matched: int
    purged: int
    sample_workflow_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, matched: _Optional[int] = ..., purged: _Optional[int] = ..., sample_workflow_ids: _Optional[_Iterable[str]] = ...) -> None: ...
