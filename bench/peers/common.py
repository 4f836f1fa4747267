"""What every peer shares: the LLM call, the two workloads' arguments, and the timings file.

Every peer process takes ``--workload research`` (the four-step workflow of
:mod:`bench.workflows`) or ``--workload agent`` (the loop of :mod:`bench.agent`, with
``--turns``), makes each LLM call with ``anthropic.AsyncAnthropic`` on its aiohttp
transport with the SDK's retries off (as Conveyor's executors do), and writes the same
JSON: when it began, how long starting every workflow took, and each workflow's start
and finish (Unix seconds), which :mod:`bench.scenarios.peer` turns into the same
numbers as Conveyor's.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, cast

import anthropic

from ..agent import agent_args
from ..harness.workload import research_args
from ..workflows import MAX_TOKENS, MODEL

WORKLOADS = ("research", "agent")
_clients: dict[int, anthropic.AsyncAnthropic] = {}


async def complete(messages: list[dict[str, Any]]) -> str:
    """One Messages API call; the reply's text. One client per event loop (engines run their own)."""
    loop = id(asyncio.get_running_loop())
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = anthropic.AsyncAnthropic(
            max_retries=0, http_client=anthropic.DefaultAioHttpClient()
        )
    message = await client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=cast(Any, messages))
    return "".join(block.text for block in message.content if block.type == "text")


async def close_clients() -> None:
    """Close this event loop's client (its aiohttp session would warn at exit otherwise)."""
    client = _clients.pop(id(asyncio.get_running_loop()), None)
    if client is not None:
        await client.close()


async def ask(prompt: str) -> str:
    return await complete([{"role": "user", "content": prompt}])


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", choices=WORKLOADS, default="research")
    parser.add_argument("--turns", type=int, default=100, help="agent workload: turns per workflow")
    parser.add_argument("--tool-every", type=int, default=5, help="agent workload: a tool call every N turns")
    parser.add_argument("--workflows", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True, help="LLM calls (activities) at once")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=900.0,
        help="seconds to wait for the workflows; unfinished ones count as not completed (default 900)",
    )


def workflow_input(args: argparse.Namespace, index: int) -> dict[str, Any]:
    """The ``index``-th workflow's arguments, the same as Conveyor's run gets."""
    if args.workload == "research":
        return research_args(index)
    return agent_args(index, args.turns, args.tool_every)


def timings_document(
    began: float, enqueued: float, created: list[float], finished: list[float | None], **extra: Any
) -> dict[str, Any]:
    return {
        "began": began,
        "enqueue_seconds": enqueued - began,
        "completed": sum(1 for f in finished if f is not None),
        "workflows": [
            {"created_at": start, "completed_at": end} for start, end in zip(created, finished, strict=True)
        ],
        **extra,
    }
