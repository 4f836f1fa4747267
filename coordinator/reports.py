"""What the coordinator reports about itself: its counters and the Diagnose report.

Plain values, imported by the engine, the metrics and the status page alike; this module
imports nothing of theirs (only types, for the checker), so none of them imports another
to learn a shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .cache_stats import CacheStats

if TYPE_CHECKING:
    from .sessions import ExecutorSession
    from .store import ShardDepth, Violation


@dataclass
class CoordinatorStats:
    """Counters since start-up (exported as metrics, shown by Diagnose)."""

    workflows_started: int = 0
    workflows_finished: dict[str, int] = field(default_factory=dict)
    results_accepted: int = 0
    results_duplicate: int = 0
    results_stale: int = 0
    tasks_claimed: int = 0
    replays: int = 0
    leases_expired: int = 0
    #: Attempts taken back at their start-to-close deadline.
    deadlines_expired: int = 0
    #: Attempts executors were told to stop (CancelTasks).
    attempts_cancelled: int = 0
    #: Finished workflows purged with their journals (retention and PurgeWorkflows).
    workflows_purged: int = 0
    #: The workflow cache's lookups and contents (the cache updates this object).
    workflow_cache: CacheStats = field(default_factory=CacheStats)


@dataclass(frozen=True)
class ExecutorView:
    session: ExecutorSession
    claimed_tasks: int
    seconds_since_heartbeat: float


@dataclass(frozen=True)
class DiagnoseReport:
    epoch: int
    shard_count: int
    shards: list[ShardDepth]
    replay_queue_depth: int
    executors: list[ExecutorView]
    violations: list[Violation]
    workflows_by_status: dict[str, int]
    rejected_stale_results: int
    generated_at: int
