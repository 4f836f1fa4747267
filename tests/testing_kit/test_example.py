"""The example of docs/testing.md, verbatim: a user's workflow tested with the testing kit.

Opting in to the plugin is one line (in a real project it goes in the top-level conftest.py).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from conveyor import WorkflowContext, workflow
from conveyor.tasks import task_handler
from conveyor.testing import ConveyorTestEnv, by_prompt

if TYPE_CHECKING:  # imported by pytest_plugins below, after pytest has set up assertion rewriting
    from conveyor.testing.pytest_plugin import ConveyorEnvFactory

pytest_plugins = ["conveyor.testing.pytest_plugin"]

MODEL = "claude-sonnet-4-5"


@task_handler("fetch")
async def fetch(payload: dict[str, str]) -> dict[str, str]:
    return {"page": f"All about {payload['topic']}."}


@workflow
async def research(ctx: WorkflowContext, topic: str) -> dict[str, str]:
    page = await ctx.task("fetch", {"topic": topic})
    claims, critique = await asyncio.gather(
        ctx.llm(model=MODEL, max_tokens=100, messages=[user(f"Claims: {page['page']}")]),
        ctx.llm(model=MODEL, max_tokens=100, messages=[user(f"Critique: {topic}")]),
    )
    return {"claims": claims.text, "critique": critique.text}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


REPLIES = by_prompt({"Claims:": "the moon pulls the sea", "Critique:": "and the sun, a little"})


async def test_research_with_the_context_manager(conveyor_database_url: str) -> None:
    async with ConveyorTestEnv.start(
        workflows=[research], handlers=[fetch], replies=REPLIES, database_url=conveyor_database_url
    ) as env:
        finished = await env.run("research", {"topic": "tides"})

    assert finished.status.value == "completed", finished.error
    assert finished.result == {"claims": "the moon pulls the sea", "critique": "and the sun, a little"}
    assert [step.kind for step in finished.steps] == ["task", "llm", "llm"]
    assert sorted(request.prompt for request in env.llm_requests) == [
        "Claims: All about tides.",
        "Critique: tides",
    ]


async def test_research_with_the_fixture(conveyor_env: ConveyorEnvFactory) -> None:
    env = await conveyor_env(workflows=[research], handlers=[fetch], replies=REPLIES)

    finished = await env.run("research", {"topic": "tides"})

    assert finished.result == {"claims": "the moon pulls the sea", "critique": "and the sun, a little"}
