"""The benchmark workloads on Temporal: same shapes, same prompts, same SDK, same simulator.

``python -m bench.peers.temporal_peer --address HOST:PORT --workload research|agent
--workflows N --concurrency C --output FILE`` (with ``ANTHROPIC_BASE_URL`` pointing at
the simulator, and a Temporal server at HOST:PORT, e.g. ``temporal server start-dev``)
runs one worker in this process, starts N workflows, waits until all have finished, and
writes the timings (see :mod:`bench.peers.common`).

Each LLM call is an activity, each tool call too; the workflow awaits them as Conveyor's
awaits steps (``asyncio.gather`` for the two analyses). Tuning, stated in the report:
the worker runs at most C activities at once (the LLM concurrency every engine gets);
workflow code runs unsandboxed (Conveyor's is not sandboxed either; the sandbox costs
a module re-import per run); the sticky workflow cache holds every workflow in flight
(``max_cached_workflows``), so no history is replayed between tasks; pollers autoscale
(Temporal's recommended setting for throughput); eager activity dispatch stays on (the
default); workflows are started with many start calls in flight, as Temporal has no
batch start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RetryPolicy
from temporalio.worker import PollerBehaviorAutoscaling, UnsandboxedWorkflowRunner, Worker

from ..agent import first_prompt, next_prompt, tool_message, tool_observation
from ..workflows import analyze_a_prompt, analyze_b_prompt, extract_prompt, summarize_prompt
from .common import add_workload_arguments, close_clients, complete, timings_document, workflow_input

TASK_QUEUE = "conveyor-bench"
STARTS_IN_FLIGHT = 32
ACTIVITY_TIMEOUT = timedelta(seconds=60)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.1), maximum_interval=timedelta(seconds=2))


@activity.defn(name="ask")
async def ask_activity(messages: list[dict[str, Any]]) -> str:
    return await complete(messages)


@activity.defn(name="lookup")
async def lookup_activity(payload: dict[str, Any]) -> dict[str, str]:
    return tool_observation(payload["session"], payload["turn"], payload["query"])


async def _ask(messages: list[dict[str, Any]]) -> str:
    return await workflow.execute_activity(
        ask_activity, messages, start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=RETRY
    )


def _user(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


@workflow.defn(name="research")
class Research:
    @workflow.run
    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        claims = await _ask(_user(extract_prompt(args["topic"])))
        analysis_a, analysis_b = await asyncio.gather(
            _ask(_user(analyze_a_prompt(claims))), _ask(_user(analyze_b_prompt(claims)))
        )
        summary = await _ask(_user(summarize_prompt(analysis_a, analysis_b)))
        # The time of the workflow task that saw the last result: when the work was done.
        return {"summary": summary, "finished_at": workflow.now().timestamp()}


@workflow.defn(name="agent_loop")
class AgentLoop:
    @workflow.run
    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        session, tool_every = args["session"], args["tool_every"]
        messages: list[dict[str, Any]] = _user(first_prompt(session))
        for turn in range(args["turns"]):
            reply = await _ask(messages)
            messages.append({"role": "assistant", "content": reply})
            if tool_every > 0 and (turn + 1) % tool_every == 0:
                observation = await workflow.execute_activity(
                    lookup_activity,
                    {"session": session, "turn": turn, "query": reply},
                    start_to_close_timeout=ACTIVITY_TIMEOUT,
                    retry_policy=RETRY,
                )
                messages.append({"role": "user", "content": tool_message(observation)})
            else:
                messages.append({"role": "user", "content": next_prompt(turn)})
        return {"summary": messages[-2]["content"], "finished_at": workflow.now().timestamp()}


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    client = await _connect(args.address)
    worker = Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[Research, AgentLoop],
        activities=[ask_activity, lookup_activity],
        workflow_runner=UnsandboxedWorkflowRunner(),
        max_concurrent_activities=args.concurrency,
        max_cached_workflows=max(1000, args.workflows),
        workflow_task_poller_behavior=PollerBehaviorAutoscaling(),
        activity_task_poller_behavior=PollerBehaviorAutoscaling(),
    )
    name = "research" if args.workload == "research" else "agent_loop"
    run_id = f"{int(time.time())}"
    async with worker:
        began = time.time()
        handles: list[WorkflowHandle[Any, Any] | None] = [None] * args.workflows
        created = [0.0] * args.workflows
        next_index = 0

        async def starter() -> None:
            nonlocal next_index
            while next_index < args.workflows:
                index, next_index = next_index, next_index + 1
                created[index] = time.time()
                handles[index] = await client.start_workflow(
                    name, workflow_input(args, index), id=f"{name}-{run_id}-{index}", task_queue=TASK_QUEUE
                )
                if (index + 1) % 1000 == 0:
                    print(f"temporal peer: {index + 1:,} workflows started", file=sys.stderr, flush=True)

        await asyncio.gather(*(starter() for _ in range(STARTS_IN_FLIGHT)))
        enqueued = time.time()
        results = await _results([h for h in handles if h is not None], began + args.time_limit)
        finished_handles = [h for h, r in zip(handles, results, strict=True) if h is not None and r]
        history_bytes = await _history_bytes(finished_handles[:5])
    await close_clients()
    finished = [r.get("finished_at") if r else None for r in results]
    return timings_document(began, enqueued, created, finished, history_bytes_per_workflow=history_bytes)


async def _results(handles: list[WorkflowHandle[Any, Any]], deadline: float) -> list[dict[str, Any] | None]:
    """Every workflow's result, a bounded number of waits at a time, with a progress line;
    None for a workflow that failed or had not finished by ``deadline`` (Unix time)."""
    gate = asyncio.Semaphore(200)
    done = 0
    loop_deadline = asyncio.get_running_loop().time() + (deadline - time.time())

    async def one(handle: WorkflowHandle[Any, Any]) -> dict[str, Any] | None:
        nonlocal done
        async with gate:
            try:
                async with asyncio.timeout_at(loop_deadline):
                    result: dict[str, Any] = await handle.result()
            except TimeoutError:
                return None
            except Exception as error:  # a failed workflow counts as not completed
                print(f"temporal peer: {handle.id} failed: {error}", file=sys.stderr, flush=True)
                return None
        done += 1
        if done % 500 == 0:
            print(f"temporal peer: {done:,} workflows finished", file=sys.stderr, flush=True)
        return result

    return list(await asyncio.gather(*(one(h) for h in handles)))


async def _history_bytes(handles: list[WorkflowHandle[Any, Any]]) -> float | None:
    """Mean size of a finished workflow's event history (Temporal's journal), in protobuf bytes."""
    sizes = [sum(event.ByteSize() for event in (await h.fetch_history()).events) for h in handles]
    return sum(sizes) / len(sizes) if sizes else None


async def _connect(address: str) -> Client:
    deadline = time.monotonic() + 60
    while True:
        try:
            return await Client.connect(address, namespace="default")
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.temporal_peer", description=__doc__)
    parser.add_argument("--address", required=True, help="the Temporal server's frontend, HOST:PORT")
    add_workload_arguments(parser)
    parser.add_argument("--output", type=Path, required=True, help="where to write the timings (JSON)")
    args = parser.parse_args(argv)
    outcome = asyncio.run(_run(args))
    args.output.write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
