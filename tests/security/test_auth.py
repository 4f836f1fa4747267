"""Bearer tokens and roles: each service answers only tokens of its role.

client → WorkflowService, executor → ExecutorService, admin → AdminService and
everything else (reflection); health checks are open. No token or an unknown one
is UNAUTHENTICATED, another role's token PERMISSION_DENIED, and a token bound to one
executor id cannot act as another executor. Every refusal leaves what is stored as it was.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conveyor import WorkflowContext, workflow
from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.auth import Role, TokenTable
from conveyor.errors import ConfigurationError
from conveyor.transport import ChannelSecurity, open_channel, read_token
from conveyor.v1 import admin_service_pb2 as admin_pb
from conveyor.v1 import admin_service_pb2_grpc, executor_service_pb2_grpc, workflow_service_pb2_grpc
from conveyor.v1 import executor_service_pb2 as executor_pb
from conveyor.v1 import workflow_service_pb2 as workflow_pb
from security.tokens import BOUND_EXECUTOR, Tokens
from support import eventually, registry_of
from toolkit import MakeStack, snapshot, task_rows

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


@workflow
async def greet(ctx: WorkflowContext, name: str) -> str:
    answer = await ctx.llm(model="m", max_tokens=20, messages=[{"role": "user", "content": f"hi {name}"}])
    return answer.text


REGISTRY = registry_of(greet)


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return OK


async def claim_status(channel: grpc.aio.Channel, executor_id: str) -> grpc.StatusCode:
    """Open a ClaimTasks stream with a Hello: OK once welcomed, else the status it ended with."""
    call = executor_service_pb2_grpc.ExecutorServiceStub(channel).ClaimTasks()
    try:
        await call.write(
            executor_pb.ClaimTasksRequest(
                hello=executor_pb.Hello(executor_id=executor_id, task_kinds=["llm"], capacity=1)
            )
        )
        message = await asyncio.wait_for(call.read(), 10)
        assert message.WhichOneof("message") == "welcome"
        return OK
    except grpc.aio.AioRpcError as error:
        return error.code()
    finally:
        call.cancel()


CALLS: dict[str, Callable[[grpc.aio.Channel], Awaitable[grpc.StatusCode]]] = {
    "WorkflowService": lambda channel: status_of(
        workflow_service_pb2_grpc.WorkflowServiceStub(channel).CountWorkflows(
            workflow_pb.CountWorkflowsRequest(), timeout=10
        )
    ),
    "ExecutorService.RecordResults": lambda channel: status_of(
        executor_service_pb2_grpc.ExecutorServiceStub(channel).RecordResults(
            executor_pb.RecordResultsRequest(executor_id="some-executor"), timeout=10
        )
    ),
    "ExecutorService.ClaimTasks": lambda channel: claim_status(channel, "some-executor"),
    "AdminService": lambda channel: status_of(
        admin_service_pb2_grpc.AdminServiceStub(channel).Diagnose(admin_pb.DiagnoseRequest(), timeout=10)
    ),
    "reflection": lambda channel: status_of(
        _list_services(reflection_pb2_grpc.ServerReflectionStub(channel))
    ),
}


async def _list_services(stub: reflection_pb2_grpc.ServerReflectionStub) -> None:
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    async for _ in call:
        pass


def expected_matrix() -> dict[str | None, dict[str, grpc.StatusCode]]:
    allowed = {
        "client": {"WorkflowService"},
        "executor": {"ExecutorService.RecordResults", "ExecutorService.ClaimTasks"},
        "admin": {"AdminService", "reflection"},
    }
    matrix: dict[str | None, dict[str, grpc.StatusCode]] = {
        role: {call: OK if call in allowed[role] else DENIED for call in CALLS} for role in allowed
    }
    matrix[None] = dict.fromkeys(CALLS, UNAUTHENTICATED)
    matrix["unknown"] = dict.fromkeys(CALLS, UNAUTHENTICATED)
    return matrix


async def test_each_token_reaches_only_its_roles_service_and_refusals_change_nothing(
    make_stack: MakeStack, tokens: Tokens
) -> None:
    stack = await make_stack(REGISTRY, auth_tokens_file=tokens.file)
    async with AsyncClient(stack.server.address, security=ChannelSecurity(token=tokens.client)) as client:
        started = await client.start_workflow("greet", {"name": "ada"})
    await eventually(lambda: task_rows(stack.database_url, started.workflow_id))
    before = await snapshot(stack.database_url)
    presented = {
        "client": tokens.client,
        "executor": tokens.executor,
        "admin": tokens.admin,
        None: None,
        "unknown": "f" * 32,
    }
    matrix = {}
    for role, token in presented.items():
        async with open_channel(stack.server.address, ChannelSecurity(token=token)) as channel:
            matrix[role] = {name: await call(channel) for name, call in CALLS.items()}

    assert matrix == expected_matrix()
    assert await snapshot(stack.database_url) == before


async def test_a_refusal_says_what_is_missing(make_stack: MakeStack, tokens: Tokens) -> None:
    stack = await make_stack(REGISTRY, auth_tokens_file=tokens.file)
    messages = {}
    for name, token in (("none", None), ("unknown", "f" * 32), ("client", tokens.client)):
        async with open_channel(stack.server.address, ChannelSecurity(token=token)) as channel:
            stub = admin_service_pb2_grpc.AdminServiceStub(channel)
            try:
                await stub.Diagnose(admin_pb.DiagnoseRequest(), timeout=10)
            except grpc.aio.AioRpcError as error:
                messages[name] = error.details()
    assert "requires a bearer token" in messages["none"] and "--token-file" in messages["none"]
    assert "not one this coordinator accepts" in messages["unknown"]
    assert messages["client"] == (
        "/conveyor.v1.AdminService/Diagnose needs a token of the admin role; this one has the client role"
    )


async def test_health_checks_need_no_token(make_stack: MakeStack, tokens: Tokens) -> None:
    stack = await make_stack(REGISTRY, auth_tokens_file=tokens.file)
    async with open_channel(stack.server.address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_bound_executor_token_acts_only_as_its_own_executor(
    make_stack: MakeStack, tokens: Tokens
) -> None:
    stack = await make_stack(REGISTRY, auth_tokens_file=tokens.file)
    async with open_channel(stack.server.address, ChannelSecurity(token=tokens.bound_executor)) as channel:
        stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
        report_as = {
            executor_id: await status_of(
                stub.RecordResults(executor_pb.RecordResultsRequest(executor_id=executor_id), timeout=10)
            )
            for executor_id in (BOUND_EXECUTOR, "another-executor")
        }
        claim_as = {
            executor_id: await claim_status(channel, executor_id)
            for executor_id in (BOUND_EXECUTOR, "another-executor")
        }
    # An unbound executor token may use any executor id.
    async with open_channel(stack.server.address, ChannelSecurity(token=tokens.executor)) as channel:
        unbound = await claim_status(channel, "another-executor")

    assert report_as == {BOUND_EXECUTOR: OK, "another-executor": DENIED}
    assert claim_as == {BOUND_EXECUTOR: OK, "another-executor": DENIED}
    assert unbound == OK


async def test_a_real_executor_and_client_run_a_workflow_with_their_tokens(
    make_stack: MakeStack, tokens: Tokens
) -> None:
    stack = await make_stack(REGISTRY, auth_tokens_file=tokens.file)
    await stack.start_simulator()
    stack.start_executor(executor_id=BOUND_EXECUTOR, security=ChannelSecurity(token=tokens.bound_executor))
    async with AsyncClient(stack.server.address, security=ChannelSecurity(token=tokens.client)) as client:
        started = await client.start_workflow("greet", {"name": "ada"})
        finished = await client.wait(started.workflow_id, timeout=30, poll_interval=0.05)
    assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, "hi ada")


async def test_an_executor_refused_by_the_coordinator_stops_with_a_clear_error(
    make_stack: MakeStack, tokens: Tokens
) -> None:
    stack = await make_stack(REGISTRY, auth_tokens_file=tokens.file)
    await stack.start_simulator()
    executor = stack.start_executor(
        executor_id="impostor", security=ChannelSecurity(token=tokens.bound_executor)
    )
    [(_, run)] = [(e, task) for e, task in stack.executors if e is executor]
    with pytest.raises(
        ConfigurationError, match="refused this executor \\(PERMISSION_DENIED: this token belongs"
    ):
        await asyncio.wait_for(run, 20)


# ------------------------------------------------------------------ token sources


def test_the_tokens_file_maps_each_token_to_its_roles_and_executor(tokens: Tokens) -> None:
    table = TokenTable.from_file(tokens.file)
    client, bound, admin = (
        table.authenticate(t) for t in (tokens.client, tokens.bound_executor, tokens.admin)
    )
    assert client is not None and client.roles == {Role.CLIENT} and client.executor_id is None
    assert bound is not None and bound.roles == {Role.EXECUTOR} and bound.executor_id == BOUND_EXECUTOR
    assert admin is not None and admin.roles == {Role.ADMIN}
    assert table.authenticate(tokens.client[:-1]) is None
    assert table.authenticate("") is None
    # Labels say where a token came from, never what it is.
    assert tokens.client not in client.label and "line 2" in client.label


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("client short-token", "use at least 16 random"),
        ("root 0123456789abcdef0123", "unknown role in 'root'"),
        ("client 0123456789abcdef0123 some-executor", "only executor tokens can be bound"),
        ("client", "expected 'ROLES TOKEN [EXECUTOR-ID]', found 1 fields"),
        ("client 0123456789abcdef0123\nadmin 0123456789abcdef0123", "the same token is listed twice"),
        ("# only a comment", "lists no tokens"),
    ],
)
def test_a_bad_tokens_file_is_refused_at_start_up(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(line + "\n")
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        TokenTable.from_file(path)


def test_several_roles_can_share_one_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("admin,client 0123456789abcdef0123\n")
    principal = TokenTable.from_file(path).authenticate("0123456789abcdef0123")
    assert principal is not None and principal.roles == {Role.ADMIN, Role.CLIENT}


def test_clients_read_their_token_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag_file, env_file = tmp_path / "flag", tmp_path / "env"
    flag_file.write_text("from-the-flag\n")
    env_file.write_text("from-the-env-file\n")
    monkeypatch.delenv("CONVEYOR_TOKEN_FILE", raising=False)
    monkeypatch.delenv("CONVEYOR_TOKEN", raising=False)
    assert read_token() is None
    monkeypatch.setenv("CONVEYOR_TOKEN", "from-the-env")
    assert read_token() == "from-the-env"
    monkeypatch.setenv("CONVEYOR_TOKEN_FILE", str(env_file))
    assert read_token() == "from-the-env-file"
    assert read_token(flag_file) == "from-the-flag"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigurationError, match="is empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ConfigurationError, match="cannot read the token file"):
        read_token(tmp_path / "missing")
