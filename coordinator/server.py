"""The coordinator process: the engine behind a grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from conveyor import monitoring
from conveyor.errors import ConfigurationError, DatabaseInUse, NotLeader
from conveyor.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    executor_service_pb2,
    executor_service_pb2_grpc,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from conveyor.workflow import WorkflowRegistry

from .api.admin_service import AdminService
from .api.decoding import MalformedRequestInterceptor
from .api.executor_service import ExecutorService
from .api.leader_gate import LeaderGate
from .api.limits import StreamMessageSizeInterceptor
from .api.workflow_service import WorkflowService
from .auth import AuthInterceptor, TokenTable
from .auth_tls import check_exposure, server_credentials
from .clock import now_us
from .config import CoordinatorConfig
from .engine import Coordinator
from .metrics import refresh_gauges
from .reports import DiagnoseReport
from .status_page import StatusPage
from .store.dialect import PostgresDialect, describe_error
from .store.leadership import Leadership, unique_holder
from .store.ownership import describe_holder

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAMES = (
    workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"].full_name,
    executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)

#: How often the health service is brought in line with :meth:`Coordinator.healthy`.
HEALTH_CHECK_INTERVAL = 0.5


def server_options(config: CoordinatorConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Executors keep one stream open for hours, often idle while LLM calls run:
        # let them ping to keep NATs and proxies from dropping it.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]


class CoordinatorServer:
    """A running coordinator: ``await start()``, then ``await stop()``."""

    def __init__(self, config: CoordinatorConfig, registry: WorkflowRegistry | None = None) -> None:
        self.config = config
        self.tokens = TokenTable.from_file(config.auth_tokens_file) if config.auth_tokens_file else None
        self._credentials = (
            None
            if config.tls_cert_file is None or config.tls_key_file is None
            else server_credentials(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
        )
        check_exposure(
            config.listen,
            authenticated=self.tokens is not None,
            tls=self._credentials is not None,
            insecure=config.insecure,
        )
        if config.metrics_port is not None or config.http_port is not None:
            monitoring.check_exposure(
                config.monitoring_host,
                authenticated=self.tokens is not None,
                insecure=config.insecure,
                what="the metrics and the status page",
                fix="Give --auth-tokens-file FILE (the monitoring role reads them)",
            )
        self.coordinator = Coordinator(
            config, registry or WorkflowRegistry.from_modules(list(config.workflow_modules))
        )
        # Authentication first: a caller without a valid token gets nothing decoded for it.
        interceptors = [AuthInterceptor(self.tokens)] if self.tokens is not None else []
        self._server = grpc.aio.server(
            options=server_options(config),
            interceptors=[
                *interceptors,
                LeaderGate(SERVICE_NAMES, self._refusal),
                MalformedRequestInterceptor(),
                StreamMessageSizeInterceptor(config.max_stream_message_bytes),
            ],
        )
        self._health = health.aio.HealthServicer()
        self.port = 0
        #: Bound ports of the metrics endpoint and the status page, once started (when configured).
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self._metrics: monitoring.MonitoringServer | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._status_page: StatusPage | None = None
        self._health_watch: asyncio.Task[None] | None = None
        #: On PostgreSQL: this coordinator's standing in the database's leadership.
        self.leadership: Leadership | None = None
        self._campaign: asyncio.Task[None] | None = None
        #: Whether the engine runs (this coordinator leads, or SQLite) and work RPCs are served.
        self._engine_running = False

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with ``listen=...:0``).

        On PostgreSQL the coordinator first campaigns for the database's leadership
        (:mod:`.store.leadership`): it leads and serves, or, with ``--standby``, stands by
        until the leader's lease runs out; without ``--standby`` a live leader makes it
        refuse to start, as SQLite's file lock refuses a second coordinator.
        """
        self._add_services()
        try:
            if self._credentials is None:
                self.port = self._server.add_insecure_port(self.config.listen)
            else:
                self.port = self._server.add_secure_port(self.config.listen, self._credentials)
        except RuntimeError as error:
            raise ConfigurationError(f"cannot listen on {self.config.listen}: {error}") from error
        try:
            if isinstance(self.coordinator.database.dialect, PostgresDialect):
                await self._start_leadership()
            elif self.config.standby:
                raise ConfigurationError(
                    "--standby needs PostgreSQL: a SQLite database is a local file that exactly one "
                    "coordinator may use (it holds the file's lock). Drop --standby, or use "
                    "--db postgresql+psycopg://... to run standbys"
                )
            else:
                await self.coordinator.start()
                self._engine_running = True
        except BaseException:
            await self._server.stop(None)
            if self.leadership is not None:
                self.leadership.release()
            raise
        await self._server.start()
        await self._publish_health()
        log.info("listening on %s", self.address)
        self._health_watch = asyncio.create_task(self._watch_health(), name="watch health")
        if self.leadership is not None:
            self._campaign = asyncio.create_task(self._campaign_loop(), name="leadership")
        await self._start_monitoring()
        return self.port

    def _add_services(self) -> None:
        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(
            WorkflowService(self.coordinator), self._server
        )
        executor_service_pb2_grpc.add_ExecutorServiceServicer_to_server(
            ExecutorService(self.coordinator, self.tokens), self._server
        )
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(self.coordinator), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )

    # ---------------------------------------------------------------- leadership

    async def _start_leadership(self) -> None:
        """Migrate (standbys need the leadership table too), then lead or stand by."""
        leadership = self.leadership = Leadership(
            self.config.database_url,
            holder=unique_holder(describe_holder(socket.gethostname(), os.getpid(), now_us())),
            address=self.advertised_address,
            lease=self.config.leader_lease,
        )
        await asyncio.to_thread(self.coordinator.database.migrate)
        if await asyncio.to_thread(leadership.campaign) or (
            not self.config.standby and await self._outwait_a_crashed_leader(leadership)
        ):
            await self.coordinator.start(leadership)
            self._engine_running = True
            return
        leader = leadership.leader
        if not self.config.standby:
            raise DatabaseInUse(
                f"database {self.coordinator.database.dialect.display_url()} is in use by "
                f"{'another coordinator' if leader is None else leader.describe()}; only one coordinator "
                "may lead a database (and schema). Stop that one first, start this one with --standby to "
                "take over when that one fails, or point --db at another database"
            )
        log.warning(
            "standing by: %s leads the database; taking over if its lease runs out",
            "another coordinator" if leader is None else leader.describe(),
        )

    async def _outwait_a_crashed_leader(self, leadership: Leadership) -> bool:
        """Whether the lead comes free within one lease: True once this coordinator leads.

        The usual reason to start a coordinator on a database that has a leader is that the
        leader crashed and this is its restart; the dead leader's lease still runs for up to
        ``--leader-lease``. A live leader keeps renewing, so waiting that long (and a little)
        refuses a second coordinator started by mistake as surely, only later.
        """
        lease = self.config.leader_lease
        log.warning(
            "the database is led by %s; waiting up to %.0f s for its lease to run out (a leader "
            "that crashed) before refusing to start",
            "another coordinator" if leadership.leader is None else leadership.leader.describe(),
            lease * 4 / 3,
        )
        deadline = time.monotonic() + lease * 4 / 3
        while time.monotonic() < deadline:
            await asyncio.sleep(lease / 6)
            if await asyncio.to_thread(leadership.campaign):
                return True
        return False

    def _refusal(self) -> NotLeader | None:
        """Why work RPCs are refused here right now (None: this coordinator serves them)."""
        if self.leadership is None:
            return None
        if not self.leadership.leading:
            return self.leadership.refusal()
        if not self._engine_running:
            return NotLeader(
                "this coordinator has just taken over the database and is recovering; retry in a moment",
                self.advertised_address,
            )
        return None

    async def _campaign_loop(self) -> None:
        """Renew the lead every third of the lease, or stand by and take over when it lapses.

        A leader that cannot renew for a whole lease (the database unreachable) steps down
        on its own: a standby may have taken over meanwhile, and its writes would be refused.
        """
        leadership = self.leadership
        assert leadership is not None
        lease = self.config.leader_lease
        confirmed = time.monotonic()
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if leadership.leading:
                    asked = time.monotonic()
                    if await _in_own_thread(leadership.renew, timeout=lease / 3):
                        confirmed = asked
                    if not leadership.leading or not self._engine_running:
                        await self._step_down()
                elif await _in_own_thread(leadership.campaign, timeout=lease / 3):
                    confirmed = time.monotonic()
                    await self._take_over()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "leadership: %s",
                    describe_error(error)
                    if not isinstance(error, TimeoutError)
                    else "the database did not answer in time",
                )
                if leadership.leading and time.monotonic() - confirmed > lease:
                    leadership.step_down(
                        f"it could not renew its lease for {lease:g}s (database unreachable?)"
                    )
                    await self._step_down()

    async def _take_over(self) -> None:
        """Elected: recover sessions from the database as a restart does, then serve."""
        assert self.leadership is not None
        began = time.monotonic()
        try:
            await self.coordinator.start(self.leadership)
        except Exception as error:
            log.exception("could not start serving after taking over the database")
            self.leadership.step_down(f"it failed to start after taking over ({error})")
            with contextlib.suppress(Exception):
                await _in_own_thread(self.leadership.resign, timeout=self.config.leader_lease / 3)
            return
        self._engine_running = True
        await self._publish_health()
        log.warning("took over the database: serving (recovered in %.2fs)", time.monotonic() - began)

    async def _step_down(self) -> None:
        """Deposed: stop serving work (executor streams end, their executors find the leader)
        and stand by. The engine's threads get one lease to stop; one stuck on a dead
        connection is left behind (everything it would still write is refused)."""
        if not self._engine_running:
            return
        self._engine_running = False
        await self._publish_health()
        try:
            async with asyncio.timeout(self.config.leader_lease):
                await self.coordinator.stop()
        except TimeoutError:
            log.error(
                "the deposed coordinator's engine did not stop within %gs (a database call hangs); "
                "standing by without it",
                self.config.leader_lease,
            )
        except Exception:
            log.exception("stopping the deposed coordinator's engine failed; standing by anyway")

    @property
    def advertised_address(self) -> str:
        """Where standbys send callers while this coordinator leads."""
        if self.config.advertise_address:
            return self.config.advertise_address
        host = self.config.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", "::", ""):
            host = socket.gethostname()
        return f"{host}:{self.port}"

    # ---------------------------------------------------------------- health

    def _health_state(self) -> tuple[bool, bool, str]:
        """(overall health, the work services' health, why): a standby is alive but does not serve work."""
        if self._refusal() is not None:
            return True, False, "standing by"
        healthy, reason = self.coordinator.healthy()
        return healthy, healthy, reason

    async def _publish_health(self) -> None:
        overall, work, _reason = self._health_state()
        await self._health.set("", _status(overall))
        for name in SERVICE_NAMES:
            await self._health.set(name, _status(work))

    async def _start_monitoring(self) -> None:
        """The metrics endpoint and the status page, each when configured."""
        config, coordinator = self.config, self.coordinator
        if config.metrics_port is not None:
            self._metrics = await monitoring.serve_metrics(
                coordinator.metrics.registry, config.monitoring_host, config.metrics_port, self._authorize
            )
            self.metrics_port = self._metrics.port

            async def report() -> DiagnoseReport:
                # A standby has no engine to report on; leadership comes without an event to await.
                while self._refusal() is not None:  # noqa: ASYNC110
                    await asyncio.sleep(config.gauge_refresh_interval)
                return await coordinator.diagnose(0, check_invariants=False)

            self._gauges = asyncio.create_task(
                refresh_gauges(coordinator.metrics, report, config.gauge_refresh_interval),
                name="refresh gauges",
            )
            log.info("metrics at http://%s:%d/metrics", config.monitoring_host, self.metrics_port)
        if config.http_port is not None:
            self._status_page = StatusPage(coordinator, self._authorize)
            self.http_port = await self._status_page.start(config.monitoring_host, config.http_port)
            log.info("status page at http://%s:%d/", config.monitoring_host, self.http_port)

    async def _watch_health(self) -> None:
        """Mirror :meth:`Coordinator.healthy` into the gRPC health service, so an orchestrator
        restarts a coordinator that can no longer make progress instead of routing to it."""
        published = self._health_state()[:2]
        while True:
            await asyncio.sleep(HEALTH_CHECK_INTERVAL)
            overall, work, reason = self._health_state()
            if (overall, work) == published:
                continue
            published = (overall, work)
            await self._publish_health()
            if work:
                log.warning("coordinator healthy again: health is SERVING")
            elif overall:
                log.warning("standing by: the work services' health is NOT_SERVING")
            else:
                log.error("coordinator unhealthy, health is NOT_SERVING: %s", reason)

    @property
    def _authorize(self) -> monitoring.Authorize | None:
        """With authentication on: who may read the metrics and the status page."""
        return None if self.tokens is None else self.tokens.may_monitor

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, let running ones finish for ``grace`` seconds, then shut down."""
        if self._health_watch is not None:
            self._health_watch.cancel()
        if self._campaign is not None:
            self._campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._campaign
        await self._health.enter_graceful_shutdown()
        # Close executor streams first: they would otherwise hold the grace period open.
        if self._engine_running:
            self.coordinator.close_executor_streams()
        if self._status_page is not None:
            await self._status_page.stop()
        if self._gauges is not None:
            self._gauges.cancel()
        if self._metrics is not None:
            await self._metrics.stop()
        await self._server.stop(grace)
        if self._engine_running:
            self._engine_running = False
            await self.coordinator.stop()
        if self.leadership is not None:
            # A standby takes over at its next poll rather than after the lease.
            with contextlib.suppress(Exception):
                await _in_own_thread(self.leadership.resign, timeout=self.config.leader_lease / 3)
            self.leadership.release()


def _status(serving: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


async def _in_own_thread(call: Callable[[], T], *, timeout: float) -> T:
    """``call()`` on a thread of its own, given up after ``timeout`` seconds.

    Not the default executor: a database call on a blackholed connection may never return,
    and it must pin neither the event loop nor a shared worker thread.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = call()
        except BaseException as error:  # handed to the awaiting coroutine
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                loop.call_soon_threadsafe(settle, None, error)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, None)

    # A call given up on may still fail later: its error is read here, not reported as lost.
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    threading.Thread(target=run, name="conveyor-leadership", daemon=True).start()
    async with asyncio.timeout(timeout):
        return await asyncio.shield(future)


async def serve(config: CoordinatorConfig) -> None:
    """Run a coordinator until SIGINT or SIGTERM."""
    server = CoordinatorServer(config)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    print(f"coordinator listening on {server.address}", flush=True)
    host = config.monitoring_host
    if server.metrics_port is not None:
        print(f"metrics at http://{host}:{server.metrics_port}/metrics", flush=True)
    if server.http_port is not None:
        print(f"status page at http://{host}:{server.http_port}/", flush=True)
    await stopping.wait()
    log.info("shutting down")
    await server.stop()
