"""The testing kit's environment: it starts everything, the LLM says what the test scripts,
and everything stops and is cleaned up whatever the test body does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import pytest

from conveyor import RetryPolicy, WorkflowContext, workflow
from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from conveyor.errors import ConfigurationError, DeadlineExceeded, Unavailable
from conveyor.testing import (
    ConveyorTestEnv,
    MessagesRequest,
    ScriptExhausted,
    SyncConveyorTestEnv,
    by_prompt,
    fixed,
    scripted,
)
from conveyor.testing.simulator import Simulator

MODEL = "claude-sonnet-4-5"


@workflow
async def two_turns(ctx: WorkflowContext, question: str) -> list[str]:
    first = await ctx.llm(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": question}])
    second = await ctx.llm(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": f"and then? {first.text}"}]
    )
    return [first.text, second.text]


@workflow
async def two_turns_once(ctx: WorkflowContext, question: str) -> list[str]:
    """``two_turns`` without retries: an LLM error fails the step at once."""
    once = RetryPolicy(max_attempts=1)
    first = await ctx.llm(model=MODEL, max_tokens=50, retry=once, messages=[user(question)])
    second = await ctx.llm(model=MODEL, max_tokens=50, retry=once, messages=[user(f"and then? {first.text}")])
    return [first.text, second.text]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


@workflow
async def needs_a_handler(ctx: WorkflowContext) -> Any:
    return await ctx.task("nobody-serves-this", {})


class Boom(Exception):
    pass


async def test_scripted_replies_answer_in_order_and_every_prompt_is_recorded(database_url: str) -> None:
    async with ConveyorTestEnv.start(
        workflows=[two_turns], replies=scripted("first", "second"), database_url=database_url
    ) as env:
        finished = await env.run("two_turns", {"question": "why?"})

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == ["first", "second"]
    assert [request.prompt for request in env.llm_requests] == ["why?", "and then? first"]


async def test_a_restarted_coordinator_is_where_the_client_and_executors_look(database_url: str) -> None:
    """The documented way to restart: stop_coordinator(), start_coordinator()."""
    async with ConveyorTestEnv.start(
        workflows=[two_turns], replies=fixed("ok"), database_url=database_url
    ) as env:
        before = await env.run("two_turns", ["once"])
        await env.stop_coordinator()
        await env.start_coordinator()
        after = await env.run("two_turns", ["again"], within=60)

    assert (before.status, after.status) == (WorkflowStatus.COMPLETED, WorkflowStatus.COMPLETED), after.error


async def test_without_replies_the_llm_echoes_the_prompt(database_url: str) -> None:
    async with ConveyorTestEnv.start(workflows=[two_turns], database_url=database_url) as env:
        finished = await env.run("two_turns", ["hello"])

    assert finished.result == ["hello", "and then? hello"]


async def test_a_still_running_workflow_is_reported_with_why(database_url: str) -> None:
    async with ConveyorTestEnv.start(workflows=[needs_a_handler], database_url=database_url) as env:
        with pytest.raises(DeadlineExceeded, match=r"needs_a_handler .* still running after 0.5s"):
            await env.run("needs_a_handler", within=0.5)


async def test_a_script_that_runs_out_fails_the_step_saying_so(database_url: str) -> None:
    async with ConveyorTestEnv.start(
        workflows=[two_turns_once], replies=scripted("only"), database_url=database_url
    ) as env:
        finished = await env.run("two_turns_once", ["why?"])

    assert finished.status is WorkflowStatus.FAILED
    assert "ScriptExhausted" in finished.error, finished.error
    assert "ran out at a call for 'and then? only'" in finished.error


async def test_everything_stops_when_the_test_body_raises() -> None:
    seen: dict[str, Any] = {}
    with pytest.raises(Boom):
        async with ConveyorTestEnv.start(workflows=[two_turns], executors=2) as env:
            assert env.server is not None and env.simulator is not None
            seen.update(
                address=env.server.address,
                simulator_url=env.simulator.base_url,
                database=Path(env.database_url.removeprefix("sqlite:///")),
                executors=[task for _executor, task in env.executors],
            )
            assert seen["database"].exists()
            raise Boom

    assert env.server is None and env.simulator is None and env.client is None and not env.executors
    assert all(task.done() for task in seen["executors"])
    assert not seen["database"].parent.exists(), "the temporary directory was left behind"
    async with AsyncClient(seen["address"], timeout=2) as client:
        with pytest.raises(Unavailable):
            await client.count_workflows()
    async with anthropic.AsyncAnthropic(base_url=seen["simulator_url"], api_key="x", max_retries=0) as sdk:
        with pytest.raises(anthropic.APIConnectionError):
            await sdk.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])


async def test_a_handler_that_is_not_marked_is_refused_and_nothing_is_left_running() -> None:
    async def unmarked(payload: Any) -> Any:
        return payload

    with pytest.raises(ConfigurationError, match="not marked with @task_handler"):
        async with ConveyorTestEnv.start(workflows=[two_turns], handlers=[unmarked]):
            pass  # pragma: no cover
    # Every task started by the environment has ended (nothing leaks into later tests).
    await asyncio.sleep(0)
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not [t for t in leftovers if "conveyor" in repr(t.get_coro()).lower()], leftovers


# ----------------------------------------------------------------- responders


def request_for(prompt: str) -> MessagesRequest:
    return MessagesRequest(model=MODEL, max_tokens=10, system_text="", messages=(("user", prompt),), body={})


def test_by_prompt_picks_the_first_fragment_found_and_falls_back_to_the_default() -> None:
    answer = by_prompt({"moon": "tides", "sun": lambda request: request.prompt.upper()}, default="?")

    assert answer(request_for("the moon and the sun")) == "tides"
    assert answer(request_for("the sun")) == "THE SUN"
    assert answer(request_for("stars")) == "?"
    assert by_prompt({"moon": "tides"})(request_for("stars")) is None  # the simulator's echo


def test_a_script_that_runs_out_says_which_call_was_one_too_many() -> None:
    answer = scripted("only")
    assert answer(request_for("first")) == "only"
    with pytest.raises(ScriptExhausted, match="ran out at a call for 'second'"):
        answer(request_for("second"))


async def test_a_responder_that_raises_is_an_api_error_500_and_a_fixed_one_answers_every_call() -> None:
    def broken(request: MessagesRequest) -> str:
        raise ValueError("no answer for this")

    async with (
        Simulator(responder=broken) as simulator,
        anthropic.AsyncAnthropic(base_url=simulator.base_url, api_key="x", max_retries=0) as sdk,
    ):
        with pytest.raises(anthropic.InternalServerError, match="responder raised: ValueError"):
            await sdk.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        simulator.responder = fixed("fine")
        reply = await sdk.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.content[0].text == "fine"  # type: ignore[union-attr]
        assert simulator.stats()["by_status"] == {"500": 1, "200": 1}


# ----------------------------------------------------------------- synchronous


def test_the_synchronous_environment_runs_a_workflow_and_stops_on_an_exception() -> None:
    with pytest.raises(Boom), SyncConveyorTestEnv.start(workflows=[two_turns], replies=fixed("yes")) as env:
        assert env.run("two_turns", ["q"]).result == ["yes", "yes"]
        assert env.client.count_workflows()[WorkflowStatus.COMPLETED] == 1
        assert [request.prompt for request in env.llm_requests] == ["q", "and then? yes"]
        inner = env.env
        raise Boom

    assert inner.server is None and inner.simulator is None and not inner.executors
    assert env.loop.is_closed()
