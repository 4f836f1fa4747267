"""The agent-loop benchmark workflow: many sequential LLM turns over a growing conversation.

Each turn sends the whole conversation so far (as an agent does), appends the
assistant's reply and the next user message, and every ``tool_every`` turns runs a
tool (a ``ctx.task`` step handled by :func:`lookup`) whose result becomes that next
user message. A workflow of ``turns`` turns therefore makes ``turns`` LLM steps and
``turns // tool_every`` tool steps, one at a time.

The coordinator loads this module with ``--workflows bench.agent`` and the executors
with ``--handlers bench.agent``. The peers (``bench/peers/``) run the same loop with
the same prompts through :func:`first_prompt`, :func:`next_prompt` and
:func:`tool_observation`, so every engine sends the same bytes to the simulator.
"""

from __future__ import annotations

import json
from typing import Any

from conveyor import WorkflowContext, task_handler, workflow

from .workflows import MAX_TOKENS, MODEL, TOPICS

NAME = "agent_loop"
TOOL_KIND = "bench-lookup"
#: A tool call every this many turns, unless the workflow is told otherwise.
DEFAULT_TOOL_EVERY = 5


def first_prompt(session: str) -> str:
    return f"You are a research agent. Investigate {session}; think step by step and call tools as needed."


def next_prompt(turn: int) -> str:
    """The user message after turn ``turn`` (0-based) when no tool ran."""
    return f"Continue with step {turn + 2}: refine the previous answer and say what is still unknown."


def tool_observation(session: str, turn: int, query: str) -> dict[str, str]:
    """What the lookup tool returns: deterministic, small, and different each call."""
    return {"text": f"lookup #{turn} for {session}: 3 sources agree on '{query[:40]}'"}


def tool_message(observation: dict[str, str]) -> str:
    return f"Tool result: {observation['text']}"


def conversation_bytes(messages: list[dict[str, Any]]) -> int:
    """The size of a conversation as the API receives it (compact JSON, UTF-8)."""
    return len(json.dumps(messages, separators=(",", ":")).encode())


def agent_args(index: int, turns: int, tool_every: int = DEFAULT_TOOL_EVERY) -> dict[str, Any]:
    """Arguments of the ``index``-th agent workflow; unique, so duplicate calls stand out."""
    return {"session": f"{TOPICS[index % len(TOPICS)]} #{index}", "turns": turns, "tool_every": tool_every}


def steps_of(turns: int, tool_every: int = DEFAULT_TOOL_EVERY) -> int:
    """Journal steps of one workflow: its LLM turns plus its tool calls."""
    return turns + (turns // tool_every if tool_every > 0 else 0)


@workflow  # registered under its own name, NAME
async def agent_loop(
    ctx: WorkflowContext,
    session: str,
    turns: int,
    tool_every: int = DEFAULT_TOOL_EVERY,
    max_tokens: int = MAX_TOKENS,
) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": first_prompt(session)}]
    for turn in range(turns):
        reply = await ctx.llm(model=MODEL, max_tokens=max_tokens, name="turn", messages=messages)
        messages.append({"role": "assistant", "content": reply.text})
        if tool_every > 0 and (turn + 1) % tool_every == 0:
            observation = await ctx.task(
                TOOL_KIND, {"session": session, "turn": turn, "query": reply.text}, name="tool"
            )
            messages.append({"role": "user", "content": tool_message(observation)})
        else:
            messages.append({"role": "user", "content": next_prompt(turn)})
    return {"turns": turns, "conversation_bytes": conversation_bytes(messages)}


@task_handler(TOOL_KIND)
async def lookup(payload: dict[str, Any]) -> dict[str, str]:
    return tool_observation(payload["session"], payload["turn"], payload["query"])
