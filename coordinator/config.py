"""Coordinator settings: one frozen object, built from flags or by tests directly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .model import ClaimOrder

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
    #: Start-to-close deadline of a task attempt whose step sets no ``timeout`` (LLM calls and
    #: handler tasks alike); the executor's own default timeout should not exceed it.
    default_task_timeout: float = 600.0
    #: Added to every attempt's timeout before the coordinator takes the task back: time for the
    #: executor, whose own timeout fires first, to report the failure itself.
    task_deadline_grace: float = 30.0
    #: Workflows replayed per transaction.
    replay_batch_size: int = 100
    #: Longest one replay of workflow code may run before its workflow is failed (blocking code).
    replay_timeout: float = 10.0
    #: How long the writer waits for more work to share a transaction.
    group_commit_window: float = 0.001
    #: SQLite ``PRAGMA synchronous``: FULL survives power loss, NORMAL only process crashes.
    sqlite_synchronous: str = "FULL"
    #: How long the writer retries a transaction while the database is unreachable.
    database_retry_deadline: float = 60.0
    #: FIFO by workflow start (the default); ``TASK_ID`` exists for the benchmarks' baseline.
    claim_order: ClaimOrder = ClaimOrder.FIFO
    #: Bearer tokens and their roles (:mod:`conveyor.coordinator.auth`); None: every caller is trusted.
    auth_tokens_file: Path | None = None
    #: PEM certificate chain and key: serve TLS instead of plaintext.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: PEM CA: clients must present a certificate it signed (mutual TLS).
    tls_client_ca_file: Path | None = None
    #: Listen on a non-loopback address without authentication (see :mod:`conveyor.coordinator.auth_tls`).
    insecure: bool = False
    #: Most executors connected at once; one more is refused with RESOURCE_EXHAUSTED.
    max_executors: int = 1000
    #: Most ClaimTasks streams open on one client connection (an executor needs one).
    max_streams_per_connection: int = 4
    #: Largest message on a stream (a ClaimTasks Hello, credit, heartbeat): a Hello of 100,000
    #: held task ids is about 1 MiB.
    max_stream_message_bytes: int = 2 * MiB
    #: Seconds a new ClaimTasks stream may take to send its Hello before it is closed.
    hello_timeout: float = 30.0
    #: Serve Prometheus metrics on this port (0: any free port); None: no metrics endpoint.
    metrics_port: int | None = None
    #: Serve the live status page on this port (0: any free port); None: no page.
    http_port: int | None = None
    #: Where the metrics endpoint and the status page listen. With ``auth_tokens_file`` both ask
    #: for a monitoring (or admin) token; without, only a loopback address unless ``insecure``.
    monitoring_host: str = "127.0.0.1"
    #: How often the queue, workflow and executor gauges are refreshed from the database.
    gauge_refresh_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.shards is not None and not 1 <= self.shards <= 10_000:
            raise ValueError(f"shards must be between 1 and 10000, not {self.shards}")
        if self.lease_ttl <= self.heartbeat_interval * 2:
            raise ValueError(
                f"lease_ttl ({self.lease_ttl}s) must exceed two heartbeat intervals "
                f"({self.heartbeat_interval}s each), or one late heartbeat loses the lease"
            )
        if not 0 < self.default_task_timeout <= 7 * 86400:
            raise ValueError(
                f"default_task_timeout must be between 0 and 604800 seconds, not {self.default_task_timeout}"
            )
        if not 0 <= self.task_deadline_grace <= 3600:
            raise ValueError(
                f"task_deadline_grace must be between 0 and 3600 seconds, not {self.task_deadline_grace}"
            )
        if not 0 < self.replay_timeout <= 3600:
            raise ValueError(
                f"replay_timeout must be more than 0 and at most 3600 seconds, not {self.replay_timeout}"
            )
        if not 1 <= self.max_batch_size <= 1000:
            raise ValueError("max_batch_size must be between 1 and 1000")
        if self.sqlite_synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError("sqlite_synchronous must be FULL or NORMAL")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs TLS: give --tls-cert and --tls-key too")
