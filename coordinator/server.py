"""The coordinator process: the engine behind a grpc.aio server."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from conveyor import monitoring
from conveyor.errors import ConfigurationError
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
from .api.limits import StreamMessageSizeInterceptor
from .api.workflow_service import WorkflowService
from .auth import AuthInterceptor, TokenTable
from .auth_tls import check_exposure, server_credentials
from .config import CoordinatorConfig
from .engine import Coordinator
from .metrics import refresh_gauges
from .status_page import StatusPage

log = logging.getLogger(__name__)

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

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with ``listen=...:0``)."""
        await self.coordinator.start()
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
        try:
            if self._credentials is None:
                self.port = self._server.add_insecure_port(self.config.listen)
            else:
                self.port = self._server.add_secure_port(self.config.listen, self._credentials)
        except RuntimeError as error:
            await self.coordinator.stop()
            raise ConfigurationError(f"cannot listen on {self.config.listen}: {error}") from error
        await self._server.start()
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("listening on %s", self.address)
        self._health_watch = asyncio.create_task(self._watch_health(), name="watch health")
        await self._start_monitoring()
        return self.port

    async def _start_monitoring(self) -> None:
        """The metrics endpoint and the status page, each when configured."""
        config, coordinator = self.config, self.coordinator
        if config.metrics_port is not None:
            self._metrics = await monitoring.serve_metrics(
                coordinator.metrics.registry, config.monitoring_host, config.metrics_port, self._authorize
            )
            self.metrics_port = self._metrics.port
            self._gauges = asyncio.create_task(
                refresh_gauges(
                    coordinator.metrics,
                    lambda: coordinator.diagnose(0, check_invariants=False),
                    config.gauge_refresh_interval,
                ),
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
        serving = True
        while True:
            await asyncio.sleep(HEALTH_CHECK_INTERVAL)
            healthy, reason = self.coordinator.healthy()
            if healthy == serving:
                continue
            serving = healthy
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if healthy
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *SERVICE_NAMES):
                await self._health.set(name, status)
            if healthy:
                log.warning("coordinator healthy again: health is SERVING")
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
        await self._health.enter_graceful_shutdown()
        # Close executor streams first: they would otherwise hold the grace period open.
        self.coordinator.close_executor_streams()
        if self._status_page is not None:
            await self._status_page.stop()
        if self._gauges is not None:
            self._gauges.cancel()
        if self._metrics is not None:
            await self._metrics.stop()
        await self._server.stop(grace)
        await self.coordinator.stop()


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
