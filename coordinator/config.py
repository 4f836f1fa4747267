"""Coordinator settings: one frozen object, built from flags or by tests directly."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class CoordinatorConfig:
    database_url: str
    workflow_modules: tuple[str, ...] = ()
    listen: str = "127.0.0.1:50051"
    #: Only used when the database is new; fixed afterwards.
    shards: int | None = None
    #: Largest workflow arguments, step result or workflow result, in bytes of JSON.
    max_payload_bytes: int = 1 * MiB
    #: Largest gRPC message either way; a full result batch must fit.
    max_message_bytes: int = 64 * MiB
    #: Most tasks per TaskBatch and results per RecordResults.
    max_batch_size: int = 50
    #: Most workflows per StartWorkflows call.
    max_start_batch: int = 1000
    heartbeat_interval: float = 1.0
    #: An executor silent this long loses its shards and tasks.
    lease_ttl: float = 10.0
    #: Workflows replayed per transaction.
    replay_batch_size: int = 100
    #: How long the writer waits for more work to share a transaction.
    group_commit_window: float = 0.001
    #: SQLite ``PRAGMA synchronous``: FULL survives power loss, NORMAL only process crashes.
    sqlite_synchronous: str = "FULL"
    #: How long the writer retries a transaction while the database is unreachable.
    database_retry_deadline: float = 60.0

    def __post_init__(self) -> None:
        if self.shards is not None and not 1 <= self.shards <= 10_000:
            raise ValueError(f"shards must be between 1 and 10000, not {self.shards}")
        if self.lease_ttl <= self.heartbeat_interval * 2:
            raise ValueError(
                f"lease_ttl ({self.lease_ttl}s) must exceed two heartbeat intervals "
                f"({self.heartbeat_interval}s each), or one late heartbeat loses the lease"
            )
        if not 1 <= self.max_batch_size <= 1000:
            raise ValueError("max_batch_size must be between 1 and 1000")
        if self.sqlite_synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError("sqlite_synchronous must be FULL or NORMAL")
