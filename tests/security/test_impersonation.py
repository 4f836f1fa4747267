"""Executor impersonation: who may act as which executor, and why a result cannot be forged.

The threat model of docs/reliability.md ("Threat model: executors"): an executor id bound
to a token in the tokens file is usable only with that token (an unbound executor token
can neither connect nor report as it), and fencing tokens are random per claim, so an
executor that knows a task's id and its holder's id still cannot complete the task.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from conveyor import WorkflowContext, workflow
from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.auth import TokenTable
from conveyor.transport import ChannelSecurity
from conveyor.v1 import executor_service_pb2 as executor_pb
from security.tokens import BOUND_EXECUTOR, Tokens
from support import ManualExecutor, llm_message_json, registry_of
from toolkit import MakeStack, snapshot, task_rows

ACCEPTED = executor_pb.RESULT_DISPOSITION_ACCEPTED
STALE = executor_pb.RESULT_DISPOSITION_STALE


@workflow
async def greet(ctx: WorkflowContext, name: str) -> str:
    answer = await ctx.llm(model="m", max_tokens=20, messages=[{"role": "user", "content": f"hi {name}"}])
    return answer.text


REGISTRY = registry_of(greet)


async def test_an_unbound_executor_token_cannot_connect_or_report_as_a_bound_executor(
    make_stack: MakeStack, tokens: Tokens
) -> None:
    stack = await make_stack(REGISTRY, auth_tokens_file=tokens.file)
    address = stack.server.address
    async with AsyncClient(address, security=ChannelSecurity(token=tokens.client)) as client:
        started = await client.start_workflow("greet", {"name": "ada"})
        async with (
            ManualExecutor(
                address, BOUND_EXECUTOR, security=ChannelSecurity(token=tokens.bound_executor)
            ) as real,
            ManualExecutor(
                address, BOUND_EXECUTOR, security=ChannelSecurity(token=tokens.executor)
            ) as impostor,
        ):
            await real.connect(free_slots=1)
            [task] = await real.take(1, within=30)
            before = await snapshot(stack.database_url)

            # Even knowing the task's real fencing token, the impostor's result is refused...
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await impostor.report(real.success(task, llm_message_json("forged")))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "bound to its own token" in (refused.value.details() or "")
            # ...and so is its Hello, which would have replaced the real executor's stream.
            with pytest.raises(AssertionError, match="PERMISSION_DENIED"):
                await impostor.connect(within=30)

            assert await snapshot(stack.database_url) == before
            assert not real.stream_ended.is_set()
            assert await real.report(real.success(task, llm_message_json("genuine"))) == [ACCEPTED]
        finished = await client.wait(started.workflow_id, timeout=60, poll_interval=0.05)
    assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, "genuine")


async def test_a_result_with_a_guessed_fencing_token_is_refused(
    make_stack: MakeStack, tokens: Tokens
) -> None:
    """Task ids are sequential and executor ids are public, but tokens cannot be guessed: an
    executor trying the first thousand tokens as another (unbound) executor completes nothing."""
    stack = await make_stack(REGISTRY, auth_tokens_file=tokens.file)
    address = stack.server.address
    security = ChannelSecurity(token=tokens.executor)
    async with AsyncClient(address, security=ChannelSecurity(token=tokens.client)) as client:
        started = await client.start_workflow("greet", {"name": "ada"})
        async with (
            ManualExecutor(address, "victim", security=security) as victim,
            ManualExecutor(address, "victim", security=security) as attacker,
        ):
            await victim.connect(free_slots=1)
            [task] = await victim.take(1, within=30)
            guesses = [
                victim.success(task, llm_message_json("forged"), fencing_token=token)
                for token in range(1, 1001)
            ]
            dispositions = []
            for batch in range(0, len(guesses), 50):  # within the batch limit
                dispositions += await attacker.report(*guesses[batch : batch + 50])
            assert set(dispositions) == {STALE}
            [row] = await task_rows(stack.database_url, started.workflow_id)
            assert row.claimed_by == "victim"
            assert await victim.report(victim.success(task, llm_message_json("genuine"))) == [ACCEPTED]
        finished = await client.wait(started.workflow_id, timeout=60, poll_interval=0.05)
    assert finished.result == "genuine"


@workflow
async def three(ctx: WorkflowContext) -> list[str]:
    answers = []
    for number in range(3):
        answer = await ctx.llm(model="m", max_tokens=5, messages=[{"role": "user", "content": str(number)}])
        answers.append(answer.text)
    return answers


async def test_every_claim_gets_a_fresh_random_fencing_token(make_stack: MakeStack) -> None:
    """Three claims of three tasks, and a re-claim after a reconnect: every token is new and
    far from the small counters a guesser would try."""
    stack = await make_stack(registry_of(three))
    await stack.client.start_workflow("three", {})
    tokens = []
    async with ManualExecutor(stack.server.address, "m1") as executor:
        await executor.connect(free_slots=1)
        for number in range(3):
            [task] = await executor.take(1, within=30)
            tokens.append(task.fencing_token)
            if number == 2:  # reconnect holding nothing: the task is claimed again, with a new token
                await executor.disconnect()
                break
            assert await executor.report(executor.success(task, llm_message_json(str(number)))) == [ACCEPTED]
            await executor.credit(1)
    async with ManualExecutor(stack.server.address, "m1") as again:
        await again.connect(free_slots=1)
        [task] = await again.take(1, within=30)
        tokens.append(task.fencing_token)
        assert await again.report(again.success(task, llm_message_json("2"))) == [ACCEPTED]
    assert len(set(tokens)) == 4
    assert all(2**32 < token < 2**63 for token in tokens), tokens


def test_the_coordinator_warns_about_unbound_executor_tokens(
    tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="conveyor.coordinator.auth"):
        TokenTable.from_file(tokens.file)
    warnings = [
        record.getMessage()
        for record in caplog.records
        if "not bound to an executor id" in record.getMessage()
    ]
    assert len(warnings) == 1 and "line 3" in warnings[0], warnings


def test_a_file_of_bound_executor_tokens_only_draws_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text("executor 0123456789abcdef0123 gpu-box-1\nclient 0123456789abcdef9999\n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="conveyor.coordinator.auth"):
        table = TokenTable.from_file(path)
    assert table.bound_executor_ids == {"gpu-box-1"}
    assert not caplog.records
