"""The metrics endpoint and the status page behind a monitoring token (issue 10, item 6).

Both expose executor ids, workflow names, failure messages and queue depths. With a
tokens file, the coordinator's monitoring endpoints answer only a token of the
``monitoring`` (or ``admin``) role; an executor's metrics answer only the token of its
``--monitoring-token-file``. Without authentication they listen on loopback only,
unless told otherwise: the same rule as the coordinator's gRPC port.
"""

from __future__ import annotations

import argparse
import base64
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conveyor import WorkflowContext, monitoring, workflow
from conveyor.client.client import AsyncClient
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import CoordinatorServer
from conveyor.errors import ConfigurationError, PermissionDenied
from conveyor.executor import cli as executor_cli
from conveyor.transport import ChannelSecurity, open_channel
from conveyor.v1 import executor_service_pb2 as executor_pb
from conveyor.v1 import executor_service_pb2_grpc
from security.tokens import Tokens
from support import registry_of
from toolkit import MakeStack


@workflow
async def noop(ctx: WorkflowContext) -> Any:
    return None


REGISTRY = registry_of(noop)
PATHS = ("/metrics", "/", "/api/overview", "/api/staircase?rows=5")


def with_monitoring_token(tokens: Tokens) -> str:
    token = secrets.token_hex(16)
    with tokens.file.open("a") as file:
        file.write(f"monitoring {token}\n")
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()}


async def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers or {}) as response,
    ):
        return response.status, await response.text()


def port_of(stack: Any, path: str) -> int:
    server = stack.server
    return int(server.metrics_port if path == "/metrics" else server.http_port)


async def test_monitoring_endpoints_need_a_monitoring_or_admin_token(
    make_stack: MakeStack, tokens: Tokens
) -> None:
    monitoring_token = with_monitoring_token(tokens)
    stack = await make_stack(REGISTRY, auth_tokens_file=tokens.file, metrics_port=0, http_port=0)
    # An executor connected with its token, so the overview would list its id.
    async with open_channel(stack.server.address, ChannelSecurity(token=tokens.executor)) as channel:
        call = executor_service_pb2_grpc.ExecutorServiceStub(channel).ClaimTasks()
        await call.write(
            executor_pb.ClaimTasksRequest(
                hello=executor_pb.Hello(executor_id="secret-executor-id", task_kinds=["llm"], capacity=1)
            )
        )
        assert (await call.read()).WhichOneof("message") == "welcome"
        for path in PATHS:
            port = port_of(stack, path)
            for refused in (
                None,
                bearer("not-a-token-of-this-coordinator"),
                bearer(tokens.client),
                bearer(tokens.executor),
                basic(tokens.client),
            ):
                status, text = await get(port, path, refused)
                assert status == 401, (path, refused, status)
                assert "secret-executor-id" not in text
            for accepted in (bearer(monitoring_token), basic(monitoring_token), bearer(tokens.admin)):
                status, _ = await get(port, path, accepted)
                assert status == 200, (path, accepted, status)
        status, text = await get(port_of(stack, "/api/overview"), "/api/overview", bearer(monitoring_token))
        assert "secret-executor-id" in text
        # A browser opening the page is asked for the token (as the password).
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{stack.server.http_port}/") as response,
        ):
            assert response.headers["WWW-Authenticate"].startswith("Basic ")
        call.cancel()


async def test_a_monitoring_token_calls_no_grpc_service(make_stack: MakeStack, tokens: Tokens) -> None:
    monitoring_token = with_monitoring_token(tokens)
    stack = await make_stack(REGISTRY, auth_tokens_file=tokens.file)
    client = AsyncClient(stack.server.address, timeout=20, security=ChannelSecurity(token=monitoring_token))
    try:
        with pytest.raises(PermissionDenied):
            await client.start_workflow("noop", {})
    finally:
        await client.close()


@pytest.mark.parametrize("ports", [{"metrics_port": 0}, {"http_port": 0}])
async def test_unauthenticated_monitoring_listens_on_loopback_only(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    config = CoordinatorConfig(
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        monitoring_host="0.0.0.0",
        **ports,
    )
    with pytest.raises(ConfigurationError, match="without authentication"):
        CoordinatorServer(config, REGISTRY)
    # Told it is trusted, or with a tokens file, it starts.
    CoordinatorServer(
        CoordinatorConfig(
            database_url=f"sqlite:///{tmp_path / 'c.db'}",
            monitoring_host="0.0.0.0",
            insecure=True,
            **ports,
        ),
        REGISTRY,
    )


def executor_arguments(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    executor_cli.add_arguments(parser)
    return parser.parse_args(list(flags))


async def test_executor_metrics_need_the_monitoring_token_file_token(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = await make_stack(REGISTRY)
    await stack.start_simulator()
    executor = stack.start_executor(concurrency=2)
    token = secrets.token_hex(16)
    token_file = tmp_path / "monitoring-token"
    token_file.write_text(token + "\n")
    arguments = executor_arguments("--metrics-port", "0", "--monitoring-token-file", str(token_file))
    server = await monitoring.serve_metrics(
        executor.metrics.registry, "127.0.0.1", 0, executor_cli.metrics_authorization(arguments)
    )
    try:
        assert (await get(server.port, "/metrics"))[0] == 401
        assert (await get(server.port, "/metrics", bearer("x" * 32)))[0] == 401
        status, text = await get(server.port, "/metrics", bearer(token))
        assert status == 200 and "conveyor_executor_slots" in text
    finally:
        await server.stop()


def test_executor_metrics_without_a_token_listen_on_loopback_only() -> None:
    with pytest.raises(ConfigurationError, match="without authentication"):
        executor_cli.metrics_authorization(
            executor_arguments("--metrics-port", "0", "--monitoring-host", "0.0.0.0")
        )
    assert (
        executor_cli.metrics_authorization(
            executor_arguments("--metrics-port", "0", "--monitoring-host", "0.0.0.0", "--insecure-monitoring")
        )
        is None
    )
