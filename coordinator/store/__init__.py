"""The coordinator's database: schema, dialects, migrations, and the transactions on it.

Writes go through :class:`Writer` (one thread, group commit); reads use the
database's reader pool from worker threads.
"""

from .children import Children
from .database import ClusterFacts, Database
from .diagnosis import ShardDepth, Violation
from .executors import ExecutorRecords
from .namespace import PREFIX, VERSION_TABLE, owns_table
from .queue import AttemptOutcome, ClaimedTask, Disposition, RecordOutcome, ReportedResult, TaskQueue
from .replays import ReplayBatchOutcome, ReplayQueue
from .signals import Signals, SignalSent
from .timers import Timers
from .workflows import Started, StartRequest, StepRecord, WorkflowRecord, Workflows, WorkflowSelection
from .writer import Writer

__all__ = [
    "PREFIX",
    "VERSION_TABLE",
    "AttemptOutcome",
    "Children",
    "ClaimedTask",
    "ClusterFacts",
    "Database",
    "Disposition",
    "ExecutorRecords",
    "RecordOutcome",
    "ReplayBatchOutcome",
    "ReplayQueue",
    "ReportedResult",
    "ShardDepth",
    "SignalSent",
    "Signals",
    "StartRequest",
    "Started",
    "StepRecord",
    "TaskQueue",
    "Timers",
    "Violation",
    "WorkflowRecord",
    "WorkflowSelection",
    "Workflows",
    "Writer",
    "owns_table",
]
