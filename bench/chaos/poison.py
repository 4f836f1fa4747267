"""Poison tasks: steps that fail on every attempt, or kill the executor that runs them.

Loaded by the coordinator (``--workflows bench.chaos.poison``) for the workflow and
by executors (``--handlers bench.chaos.poison``) for the handlers. A poisoned
workflow must end failed after its attempts, without holding up the workflows
queued behind it on its shard.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow

ALWAYS_FAILS = "chaos-always-fails"
CRASHES_EXECUTOR = "chaos-crashes-executor"
#: Few attempts: the scenario waits for them all.
POISON_RETRY = RetryPolicy(max_attempts=2, initial_backoff=1.0)


@task_handler(ALWAYS_FAILS)
def always_fails(payload: Any) -> None:
    raise RuntimeError(f"poison task {payload!r} fails on every attempt")


@task_handler(CRASHES_EXECUTOR)
def crashes_executor(payload: Any) -> None:
    # The way a segfault in a native library ends a process: no cleanup, no report.
    os.kill(os.getpid(), signal.SIGKILL)


@workflow
async def poisoned(ctx: WorkflowContext, kind: str) -> Any:
    """One task of ``kind`` (:data:`ALWAYS_FAILS` or :data:`CRASHES_EXECUTOR`)."""
    return await ctx.task(kind, {"kind": kind}, retry=POISON_RETRY)
