"""Executors cut off by a coordinator restart come back at different moments, not in one wave."""

from __future__ import annotations

from typing import Any

from conveyor import WorkflowContext, workflow
from conveyor.tasks import HandlerRegistry
from support import eventually, registry_of

#: In one process the executors share one connection, which takes at most 4 streams.
EXECUTORS = 4


@workflow
async def noop(ctx: WorkflowContext) -> None:
    return None


async def echo(payload: Any) -> Any:
    return payload


async def test_executors_reconnecting_after_a_coordinator_restart_pick_different_delays(make_stack) -> None:
    stack = await make_stack(registry_of(noop))
    executors = [
        stack.start_executor(
            handlers=HandlerRegistry({"echo": echo}),
            llm=False,
            reconnect_max_delay=0.5,
            executor_id=f"jitter-{n}",
        )
        for n in range(EXECUTORS)
    ]

    async def live() -> int:
        report = await stack.client.diagnose()
        return sum(1 for e in report.executors if e.state == "live") == EXECUTORS

    await eventually(live)
    port = stack.server.port
    await stack.stop_coordinator()
    # Each executor lost its stream at the same moment and keeps trying on its own schedule.
    await eventually(lambda: all(len(e.reconnect_delays) >= 3 for e in executors))
    await stack.start_coordinator(port=port)
    await eventually(live)

    first_delays = [e.reconnect_delays[0] for e in executors]
    assert len(set(first_delays)) == EXECUTORS, first_delays
    schedules = [tuple(e.reconnect_delays[:3]) for e in executors]
    assert len(set(schedules)) == EXECUTORS, schedules
    assert all(0.0 <= d <= 0.5 for e in executors for d in e.reconnect_delays)
