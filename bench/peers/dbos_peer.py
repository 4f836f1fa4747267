"""The benchmark workflow on DBOS Transact: same shape, same prompts, same SDK, same simulator.

``python -m bench.peers.dbos_peer --system-db URL [--workload research|agent] --workflows N
--concurrency C --output FILE`` (with ``ANTHROPIC_BASE_URL`` pointing at the simulator)
enqueues N workflows
on a DBOS queue of concurrency C, waits until all have finished, and writes the
timings to FILE as JSON: when each workflow was enqueued and when its last step
finished, and how long enqueueing took.

The workflow mirrors :func:`bench.workflows.research` exactly: ``extract``, then
``analyze_a`` and ``analyze_b`` at once (``asyncio.gather`` of two steps), then
``summarize``; each step one Messages API call through ``anthropic.AsyncAnthropic``
on its aiohttp transport with the SDK's retries off, as Conveyor's executors do. The
agent loop mirrors :func:`bench.agent.agent_loop`: one step per turn (the whole
conversation as its input) and one per tool call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSConfig

from ..agent import first_prompt, next_prompt, tool_message, tool_observation
from ..workflows import (
    analyze_a_prompt,
    analyze_b_prompt,
    extract_prompt,
    summarize_prompt,
)
from .common import add_workload_arguments, complete, workflow_input

QUEUE_NAME = "bench"
QUEUE_POLLING_INTERVAL = 0.1
ENQUEUES_IN_FLIGHT = 8


@DBOS.step()
async def ask(prompt: str) -> str:
    # The client is made on the loop DBOS runs workflows on (one per loop: see complete()).
    return await complete([{"role": "user", "content": prompt}])


@DBOS.step()
async def finished_at() -> float:
    """When the workflow's last LLM step was done (a step, so replays would see the same value)."""
    return time.time()


@DBOS.step()
async def turn(messages: list[dict[str, Any]]) -> str:
    return await complete(messages)


@DBOS.step()
async def lookup(session: str, turn: int, query: str) -> dict[str, str]:
    return tool_observation(session, turn, query)


@DBOS.workflow()
async def agent_loop(session: str, turns: int, tool_every: int) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": first_prompt(session)}]
    for index in range(turns):
        reply = await turn(messages)
        messages.append({"role": "assistant", "content": reply})
        if tool_every > 0 and (index + 1) % tool_every == 0:
            observation = await lookup(session, index, reply)
            messages.append({"role": "user", "content": tool_message(observation)})
        else:
            messages.append({"role": "user", "content": next_prompt(index)})
    return {"summary": messages[-2]["content"], "finished_at": await finished_at()}


@DBOS.workflow()
async def research(topic: str) -> dict[str, Any]:
    claims = await ask(extract_prompt(topic))
    analysis_a, analysis_b = await asyncio.gather(
        ask(analyze_a_prompt(claims)), ask(analyze_b_prompt(claims))
    )
    summary = await ask(summarize_prompt(analysis_a, analysis_b))
    return {"topic": topic, "summary": summary, "finished_at": await finished_at()}


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    # DBOS polls its queues once a second by default; 0.1 s lets it keep up with a
    # zero-latency simulator (a setting in DBOS's favour, stated in the report).
    queue = await DBOS.register_queue_async(
        QUEUE_NAME, worker_concurrency=args.concurrency, polling_interval_sec=QUEUE_POLLING_INTERVAL
    )
    chosen = research if args.workload == "research" else agent_loop
    began = time.time()
    handles: list[Any] = [None] * args.workflows
    created: list[float] = [0.0] * args.workflows
    next_index = 0

    async def enqueuer() -> None:  # a few enqueues in flight, as Conveyor's driver has start calls
        nonlocal next_index
        while next_index < args.workflows:
            index, next_index = next_index, next_index + 1
            created[index] = time.time()
            arguments = workflow_input(args, index)
            if args.workload == "research":
                handles[index] = await queue.enqueue_async(research, arguments["topic"])
            else:
                handles[index] = await queue.enqueue_async(agent_loop, **arguments)
            if (index + 1) % 1000 == 0:
                print(f"dbos peer: {index + 1:,} workflows enqueued", file=sys.stderr, flush=True)

    await asyncio.gather(*(enqueuer() for _ in range(ENQUEUES_IN_FLIGHT)))
    enqueued = time.time()
    # One status query a second, rather than a poll per workflow handle.
    while True:
        unfinished = await DBOS.list_workflows_async(
            name=chosen.__qualname__,
            status=["ENQUEUED", "PENDING"],
            limit=1,
            load_input=False,
            load_output=False,
        )
        if not unfinished or time.time() > began + args.time_limit:
            break
        await asyncio.sleep(1.0)
    finished = time.time()
    outputs = {
        status.workflow_id: status.output
        for status in await DBOS.list_workflows_async(name=chosen.__qualname__, load_input=False)
    }
    results = [outputs.get(handle.get_workflow_id()) or {} for handle in handles]
    return {
        "began": began,
        "enqueue_seconds": enqueued - began,
        "finished": finished,
        "completed": sum(1 for result in results if result.get("summary")),
        "workflows": [
            {"created_at": start, "completed_at": result.get("finished_at")}
            for start, result in zip(created, results, strict=True)
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.dbos_peer", description=__doc__)
    parser.add_argument("--system-db", required=True, help="DBOS system database URL (SQLite or PostgreSQL)")
    parser.add_argument(
        "--schema", default="dbos", help="DBOS system schema on PostgreSQL (default %(default)s)"
    )
    add_workload_arguments(parser)
    parser.add_argument("--output", type=Path, required=True, help="where to write the timings (JSON)")
    args = parser.parse_args(argv)
    config: DBOSConfig = {
        "name": "conveyor-bench-peer",
        "system_database_url": args.system_db,
        "dbos_system_schema": args.schema,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        outcome = asyncio.run(_run(args))
    finally:
        DBOS.destroy()
    args.output.write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
