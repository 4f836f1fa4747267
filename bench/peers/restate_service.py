"""The benchmark workloads as Restate workflows, served over HTTP/2 for a Restate server.

``hypercorn bench.peers.restate_service:app`` serves them; the server (``restate-server``)
invokes them and journals each ``ctx.run`` step. The shapes and prompts are Conveyor's
(:mod:`bench.workflows`, :mod:`bench.agent`); LLM calls at once are bounded by
``$BENCH_LLM_CONCURRENCY`` in this process, the LLM concurrency every engine gets.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import restate

from ..agent import first_prompt, next_prompt, tool_message, tool_observation
from ..workflows import analyze_a_prompt, analyze_b_prompt, extract_prompt, summarize_prompt
from .common import complete

_gate: asyncio.Semaphore | None = None


async def ask(messages: list[dict[str, Any]]) -> str:
    global _gate
    if _gate is None:
        _gate = asyncio.Semaphore(int(os.environ.get("BENCH_LLM_CONCURRENCY", "100")))
    async with _gate:
        return await complete(messages)


async def lookup(session: str, turn: int, query: str) -> dict[str, str]:
    return tool_observation(session, turn, query)


async def finished_at() -> float:
    """When the workflow's last LLM step was done (a step, so a replay sees the same value)."""
    return time.time()


def _user(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


research = restate.Workflow("research")


@research.main(name="run")
async def run_research(ctx: restate.WorkflowContext, args: dict[str, Any]) -> dict[str, Any]:
    claims = await ctx.run_typed("extract", ask, messages=_user(extract_prompt(args["topic"])))
    analysis_a = ctx.run_typed("analyze_a", ask, messages=_user(analyze_a_prompt(claims)))
    analysis_b = ctx.run_typed("analyze_b", ask, messages=_user(analyze_b_prompt(claims)))
    await restate.gather(analysis_a, analysis_b)
    summary = await ctx.run_typed(
        "summarize", ask, messages=_user(summarize_prompt(await analysis_a, await analysis_b))
    )
    return {"summary": summary, "finished_at": await ctx.run_typed("finished_at", finished_at)}


agent_loop = restate.Workflow("agent_loop")


@agent_loop.main(name="run")
async def run_agent_loop(ctx: restate.WorkflowContext, args: dict[str, Any]) -> dict[str, Any]:
    session, tool_every = args["session"], args["tool_every"]
    messages: list[dict[str, Any]] = _user(first_prompt(session))
    for turn in range(args["turns"]):
        reply = await ctx.run_typed("turn", ask, messages=messages)
        messages.append({"role": "assistant", "content": reply})
        if tool_every > 0 and (turn + 1) % tool_every == 0:
            observation = await ctx.run_typed("tool", lookup, session=session, turn=turn, query=reply)
            messages.append({"role": "user", "content": tool_message(observation)})
        else:
            messages.append({"role": "user", "content": next_prompt(turn)})
    return {
        "summary": messages[-2]["content"],
        "finished_at": await ctx.run_typed("finished_at", finished_at),
    }


app = restate.app([research, agent_loop])
