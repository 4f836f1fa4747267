"""Coordinator settings: one frozen object, built from its options (flags, environment, config
file: :mod:`conveyor.settings`) or by tests directly.

:data:`OPTIONS` defines every option of ``conveyor coordinator``, defaults included; the
dataclass takes its defaults from there. Fields without an option are internal limits that
only code and tests set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conveyor.logs import LOG_OPTIONS
from conveyor.settings import Kind, Option, Options
from conveyor.tracing import TRACING_OPTIONS

from .model import ClaimOrder

MiB = 1024 * 1024

_MONITORING = "monitoring"
_MONITORING_HELP = (
    "With --auth-tokens-file, the metrics and the status page ask for a token of the "
    "monitoring (or admin) role; without it they ask for none, so they then only listen on a "
    "loopback address unless given --insecure"
)
_LIMITS = "limits"
_LEADERSHIP = "leadership (PostgreSQL)"
_SECURITY = "security"
_SECURITY_HELP = (
    "Without --auth-tokens-file every caller is trusted, so the coordinator then only "
    "listens on a loopback address unless given --insecure"
)

#: Every option of ``conveyor coordinator``: its flag, $CONVEYOR_ variable, config-file key and default.
OPTIONS = (
    Options(
        Option(
            "db",
            Kind.TEXT,
            None,
            "SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB; the schema is created "
            "and migrated at start",
            field="database_url",
            required=True,
            metavar="URL",
        ),
        Option(
            "workflows",
            Kind.LIST,
            (),
            "importable modules defining @workflow functions (repeatable flag; comma-separated variable)",
            field="workflow_modules",
            required=True,
            metavar="MODULE",
        ),
        Option(
            "listen",
            Kind.TEXT,
            "127.0.0.1:50051",
            "gRPC address (health checking and reflection are enabled)",
            metavar="HOST:PORT",
        ),
        Option(
            "shards",
            Kind.INT,
            None,
            "shard count of a NEW database; fixed afterwards",
            low=1,
            high=10_000,
            default_text="100",
        ),
        Option(
            "max_payload_bytes",
            Kind.INT,
            1 * MiB,
            "largest workflow arguments, step result or workflow result, in bytes of JSON",
            low=1,
            default_text="1048576 (1 MiB)",
        ),
        Option(
            "heartbeat_interval", Kind.FLOAT, 1.0, "seconds between executor heartbeats", low=0.001, high=60
        ),
        Option(
            "lease_ttl",
            Kind.FLOAT,
            10.0,
            "seconds without a heartbeat before an executor's shards and tasks move elsewhere",
            low=0.001,
        ),
        Option(
            "task_timeout",
            Kind.FLOAT,
            600.0,
            "start-to-close deadline in seconds of a task attempt (LLM call or handler) whose step "
            "sets no timeout; past it plus --task-deadline-grace the coordinator takes the task back, "
            "cancels it on its executor and retries or fails it",
            field="default_task_timeout",
            low=0.001,
            high=7 * 86400,
        ),
        Option(
            "task_deadline_grace",
            Kind.FLOAT,
            30.0,
            "seconds added to every attempt's timeout before the coordinator takes it back, for the "
            "executor to report its own timeout first",
            low=0,
            high=3600,
        ),
        Option(
            "replay_timeout",
            Kind.FLOAT,
            10.0,
            "seconds one replay of workflow code may run before that workflow is failed; workflow "
            "code that blocks or computes for longer belongs in a task handler",
            low=0.001,
            high=3600,
        ),
        Option(
            "standby",
            Kind.BOOL,
            False,
            "PostgreSQL only: if another coordinator leads the database, stand by (health NOT_SERVING "
            "for the work services, callers sent to the leader) and take over when its lease runs out, "
            "instead of refusing to start",
            group=_LEADERSHIP,
        ),
        Option(
            "leader_lease",
            Kind.FLOAT,
            6.0,
            "seconds a leader's lease lasts; it renews every third of it, and a standby takes over "
            "within about 4/3 of it after the leader died, stalled or lost the database",
            low=0.3,
            high=600,
            group=_LEADERSHIP,
        ),
        Option(
            "advertise_address",
            Kind.TEXT,
            None,
            "the HOST:PORT standbys send callers to while this coordinator leads",
            metavar="HOST:PORT",
            default_text="--listen (its host replaced by this machine's name if it is 0.0.0.0 or [::])",
            group=_LEADERSHIP,
        ),
        Option(
            "workflow_cache_size",
            Kind.INT,
            10_000,
            "workflows whose suspended code the coordinator keeps in memory between steps (LRU), so "
            "advancing one does not replay its journal; 0 turns the cache off",
            low=0,
            high=10_000_000,
        ),
        Option(
            "workflow_cache_mib",
            Kind.INT,
            512,
            "bound on the estimated memory of the cached workflows, in MiB (LRU beyond it)",
            low=1,
            high=1_000_000,
        ),
        Option(
            "sqlite_synchronous",
            Kind.TEXT,
            "FULL",
            "FULL survives power loss; NORMAL only process crashes, but commits faster",
            choices=("FULL", "NORMAL"),
        ),
        Option(
            "claim_order",
            Kind.TEXT,
            ClaimOrder.FIFO,
            "fifo: oldest workflow's tasks first; task-id: oldest task first, the pre-FIFO order, "
            "only for comparing the two in benchmarks",
            choices=tuple(order.value for order in ClaimOrder),
        ),
        Option(
            "retention",
            Kind.DURATION,
            None,
            "purge finished workflows (completed, failed, cancelled) and their journal this long after "
            "they finished, in small batches in the background (90m, 12h, 7d)",
            low=1,
            default_text="off (keep forever)",
        ),
        Option(
            "metrics_port",
            Kind.INT,
            None,
            "serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)",
            metavar="PORT",
            low=0,
            high=65535,
            default_text="off",
            group=_MONITORING,
        ),
        Option(
            "http_port",
            Kind.INT,
            None,
            "serve the live status page at http://HOST:PORT/ (0: any free port)",
            metavar="PORT",
            low=0,
            high=65535,
            default_text="off",
            group=_MONITORING,
        ),
        Option(
            "monitoring_host",
            Kind.TEXT,
            "127.0.0.1",
            "address the metrics and the status page listen on",
            metavar="HOST",
            group=_MONITORING,
        ),
        Option(
            "auth_tokens_file",
            Kind.PATH,
            None,
            "bearer tokens and their roles, one per line: 'ROLES TOKEN [EXECUTOR-ID]' (roles: client, "
            "executor, admin, monitoring); without it every caller is trusted",
            metavar="FILE",
            default_text="off",
            group=_SECURITY,
        ),
        Option(
            "tls_cert",
            Kind.PATH,
            None,
            "PEM certificate chain: serve TLS",
            field="tls_cert_file",
            metavar="FILE",
            default_text="off",
            group=_SECURITY,
        ),
        Option(
            "tls_key",
            Kind.PATH,
            None,
            "PEM private key of --tls-cert",
            field="tls_key_file",
            metavar="FILE",
            default_text="off",
            group=_SECURITY,
        ),
        Option(
            "tls_client_ca",
            Kind.PATH,
            None,
            "PEM CA: require client certificates it signed (mutual TLS)",
            field="tls_client_ca_file",
            metavar="FILE",
            default_text="off",
            group=_SECURITY,
        ),
        Option(
            "insecure",
            Kind.BOOL,
            False,
            "allow a non-loopback --listen or --monitoring-host address without --auth-tokens-file",
            group=_SECURITY,
        ),
        Option(
            "max_executors",
            Kind.INT,
            1000,
            "most executors connected at once; one more is refused with RESOURCE_EXHAUSTED",
            low=1,
            group=_LIMITS,
        ),
        Option(
            "max_batch_size",
            Kind.INT,
            50,
            "most tasks per TaskBatch and results per RecordResults",
            low=1,
            high=1000,
            group=_LIMITS,
        ),
        Option(
            "max_start_batch", Kind.INT, 1000, "most workflows per StartWorkflows call", low=1, group=_LIMITS
        ),
        Option(
            "max_message_bytes",
            Kind.INT,
            64 * MiB,
            "largest gRPC message either way; a full result batch must fit",
            low=1024,
            default_text="67108864 (64 MiB)",
            group=_LIMITS,
        ),
        Option(
            "max_watchers",
            Kind.INT,
            10_000,
            "most WatchWorkflow streams open at once (a client's wait() holds one); one more is "
            "refused with RESOURCE_EXHAUSTED",
            low=1,
            group=_LIMITS,
        ),
        Option(
            "max_streams_per_connection",
            Kind.INT,
            4,
            "most ClaimTasks streams open on one client connection (an executor needs one)",
            low=1,
            group=_LIMITS,
        ),
        Option(
            "max_stream_message_bytes",
            Kind.INT,
            2 * MiB,
            "largest message on a ClaimTasks stream (a Hello of 100,000 held task ids is about 1 MiB)",
            low=1024,
            default_text="2097152 (2 MiB)",
            group=_LIMITS,
        ),
        Option(
            "hello_timeout",
            Kind.FLOAT,
            30.0,
            "seconds a new ClaimTasks stream may take to send its Hello before it is closed",
            low=0.001,
            group=_LIMITS,
        ),
        Option(
            "database_retry_deadline",
            Kind.FLOAT,
            60.0,
            "seconds the writer retries a transaction while the database is unreachable",
            low=0,
            group=_LIMITS,
        ),
        Option(
            "gauge_refresh_interval",
            Kind.FLOAT,
            5.0,
            "seconds between refreshes of the queue, workflow and executor gauges from the database",
            low=0.001,
            group=_LIMITS,
        ),
        groups={
            _MONITORING: _MONITORING_HELP,
            _SECURITY: _SECURITY_HELP,
            _LIMITS: "Bounds every caller is held to; the defaults suit most deployments.",
            _LEADERSHIP: "Several coordinators on one PostgreSQL database: one leads, the others "
            "(--standby) take over when it fails. SQLite allows exactly one coordinator.",
        },
    )
    + LOG_OPTIONS
    + TRACING_OPTIONS
)


@dataclass(frozen=True)
class CoordinatorConfig:
    database_url: str
    workflow_modules: tuple[str, ...] = OPTIONS.defaults.workflows
    listen: str = OPTIONS.defaults.listen
    #: Only used when the database is new; fixed afterwards.
    shards: int | None = OPTIONS.defaults.shards
    #: Largest workflow arguments, step result or workflow result, in bytes of JSON.
    max_payload_bytes: int = OPTIONS.defaults.max_payload_bytes
    #: Largest gRPC message either way; a full result batch must fit.
    max_message_bytes: int = OPTIONS.defaults.max_message_bytes
    #: Most tasks per TaskBatch and results per RecordResults.
    max_batch_size: int = OPTIONS.defaults.max_batch_size
    #: Most workflows per StartWorkflows call.
    max_start_batch: int = OPTIONS.defaults.max_start_batch
    heartbeat_interval: float = OPTIONS.defaults.heartbeat_interval
    #: An executor silent this long loses its shards and tasks.
    lease_ttl: float = OPTIONS.defaults.lease_ttl
    #: Start-to-close deadline of a task attempt whose step sets no ``timeout`` (LLM calls and
    #: handler tasks alike); the executor's own default timeout should not exceed it.
    default_task_timeout: float = OPTIONS.defaults.task_timeout
    #: Added to every attempt's timeout before the coordinator takes the task back: time for the
    #: executor, whose own timeout fires first, to report the failure itself.
    task_deadline_grace: float = OPTIONS.defaults.task_deadline_grace
    #: Workflows replayed per transaction.
    replay_batch_size: int = 100
    #: Longest one replay of workflow code may run before its workflow is failed (blocking code).
    replay_timeout: float = OPTIONS.defaults.replay_timeout
    #: Suspended workflow runs kept between activations (0: no cache); see workflow_cache.py.
    workflow_cache_size: int = OPTIONS.defaults.workflow_cache_size
    #: Bound on their estimated memory, in MiB.
    workflow_cache_mib: int = OPTIONS.defaults.workflow_cache_mib
    #: How long the writer waits for more work to share a transaction.
    group_commit_window: float = 0.001
    #: SQLite ``PRAGMA synchronous``: FULL survives power loss, NORMAL only process crashes.
    sqlite_synchronous: str = OPTIONS.defaults.sqlite_synchronous
    #: How long the writer retries a transaction while the database is unreachable.
    database_retry_deadline: float = OPTIONS.defaults.database_retry_deadline
    #: FIFO by workflow start (the default); ``TASK_ID`` exists for the benchmarks' baseline.
    claim_order: ClaimOrder = OPTIONS.defaults.claim_order
    #: Bearer tokens and their roles (:mod:`conveyor.coordinator.auth`); None: every caller is trusted.
    auth_tokens_file: Path | None = OPTIONS.defaults.auth_tokens_file
    #: PEM certificate chain and key: serve TLS instead of plaintext.
    tls_cert_file: Path | None = OPTIONS.defaults.tls_cert
    tls_key_file: Path | None = OPTIONS.defaults.tls_key
    #: PEM CA: clients must present a certificate it signed (mutual TLS).
    tls_client_ca_file: Path | None = OPTIONS.defaults.tls_client_ca
    #: Listen on a non-loopback address without authentication (see :mod:`conveyor.coordinator.auth_tls`).
    insecure: bool = OPTIONS.defaults.insecure
    #: Stand by when another coordinator leads the (PostgreSQL) database instead of refusing to start.
    standby: bool = OPTIONS.defaults.standby
    #: Seconds a leader's lease lasts (renewed every third of it); a standby takes over once it ran out.
    leader_lease: float = OPTIONS.defaults.leader_lease
    #: Where standbys send callers while this coordinator leads; None: derived from ``listen``.
    advertise_address: str | None = OPTIONS.defaults.advertise_address
    #: Most executors connected at once; one more is refused with RESOURCE_EXHAUSTED.
    max_executors: int = OPTIONS.defaults.max_executors
    #: Most WatchWorkflow streams open at once; one more is refused with RESOURCE_EXHAUSTED.
    max_watchers: int = OPTIONS.defaults.max_watchers
    #: Most ClaimTasks streams open on one client connection (an executor needs one).
    max_streams_per_connection: int = OPTIONS.defaults.max_streams_per_connection
    #: Largest message on a stream (a ClaimTasks Hello, credit, heartbeat): a Hello of 100,000
    #: held task ids is about 1 MiB.
    max_stream_message_bytes: int = OPTIONS.defaults.max_stream_message_bytes
    #: Seconds a new ClaimTasks stream may take to send its Hello before it is closed.
    hello_timeout: float = OPTIONS.defaults.hello_timeout
    #: Serve Prometheus metrics on this port (0: any free port); None: no metrics endpoint.
    metrics_port: int | None = OPTIONS.defaults.metrics_port
    #: Serve the live status page on this port (0: any free port); None: no page.
    http_port: int | None = OPTIONS.defaults.http_port
    #: Where the metrics endpoint and the status page listen. With ``auth_tokens_file`` both ask
    #: for a monitoring (or admin) token; without, only a loopback address unless ``insecure``.
    monitoring_host: str = OPTIONS.defaults.monitoring_host
    #: How often the queue, workflow and executor gauges are refreshed from the database.
    gauge_refresh_interval: float = OPTIONS.defaults.gauge_refresh_interval
    #: Seconds after it finished that a workflow is purged with its journal; None: kept forever.
    retention: float | None = OPTIONS.defaults.retention
    #: Workflows purged per write transaction (by the retention loop and PurgeWorkflows).
    retention_batch_size: int = 500
    #: Longest the retention loop waits before looking for expired workflows again.
    retention_interval: float = 60.0

    def __post_init__(self) -> None:
        OPTIONS.check_bounds(self)  # however the config was built
        if self.lease_ttl <= self.heartbeat_interval * 2:
            raise ValueError(
                f"lease_ttl ({self.lease_ttl}s) must exceed two heartbeat intervals "
                f"({self.heartbeat_interval}s each), or one late heartbeat loses the lease"
            )
        if self.sqlite_synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError("sqlite_synchronous must be FULL or NORMAL")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs TLS: give --tls-cert and --tls-key too")
