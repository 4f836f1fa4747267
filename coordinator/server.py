"""The coordinator process: the engine behind a grpc.aio server."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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
from .api.executor_service import ExecutorService
from .api.workflow_service import WorkflowService
from .config import CoordinatorConfig
from .engine import Coordinator

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"].full_name,
    executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


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
        self.coordinator = Coordinator(
            config, registry or WorkflowRegistry.from_modules(list(config.workflow_modules))
        )
        self._server = grpc.aio.server(options=server_options(config))
        self._health = health.aio.HealthServicer()
        self.port = 0

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with ``listen=...:0``)."""
        await self.coordinator.start()
        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(
            WorkflowService(self.coordinator), self._server
        )
        executor_service_pb2_grpc.add_ExecutorServiceServicer_to_server(
            ExecutorService(self.coordinator), self._server
        )
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(self.coordinator), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        try:
            self.port = self._server.add_insecure_port(self.config.listen)
        except RuntimeError as error:
            await self.coordinator.stop()
            raise ConfigurationError(f"cannot listen on {self.config.listen}: {error}") from error
        await self._server.start()
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("listening on %s", self.address)
        return self.port

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, let running ones finish for ``grace`` seconds, then shut down."""
        await self._health.enter_graceful_shutdown()
        # Close executor streams first: they would otherwise hold the grace period open.
        for session in self.coordinator.sessions:
            session.close_stream()
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
    await stopping.wait()
    log.info("shutting down")
    await server.stop()
