"""The replay runner: workflow code on a thread of its own, each replay within a deadline."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from conveyor.coordinator.model import WorkflowStatus
from conveyor.coordinator.replay import ReplayOutcome
from conveyor.coordinator.replay_runner import ReplayCall, ReplayRunner
from support import eventually

DONE = ReplayOutcome(WorkflowStatus.COMPLETED, result_json="1")


def exits() -> ReplayOutcome:
    raise SystemExit(2)


async def test_anything_a_replay_raises_fails_that_replay_and_the_runner_carries_on() -> None:
    runner = ReplayRunner(timeout=60)
    try:
        failed, done = await runner.run([ReplayCall("wf-1", exits), ReplayCall("wf-2", lambda: DONE)])
    finally:
        runner.stop()

    assert failed.status is WorkflowStatus.FAILED
    assert failed.error == "replay failed unexpectedly: SystemExit(2)"
    assert done == DONE


async def test_each_replay_of_a_batch_has_its_own_deadline_not_the_batch_as_a_whole() -> None:
    # Five replays of 0.4 s each under a 1 s deadline: the batch takes 2 s, none overruns.
    def slowish() -> ReplayOutcome:
        time.sleep(0.4)
        return DONE

    runner = ReplayRunner(timeout=1)
    try:
        outcomes = await runner.run([ReplayCall(f"wf-{i}", slowish) for i in range(5)])
    finally:
        runner.stop()

    assert outcomes == [DONE] * 5
    assert runner.timeouts == 0


async def test_a_replay_that_overruns_fails_and_the_next_one_runs_on_a_fresh_thread() -> None:
    release = threading.Event()
    threads: list[str] = []

    def blocks() -> ReplayOutcome:
        threads.append(threading.current_thread().name)
        release.wait(120)
        return DONE

    def quick() -> ReplayOutcome:
        threads.append(threading.current_thread().name)
        return DONE

    runner = ReplayRunner(timeout=5)
    try:
        overran, done = await runner.run([ReplayCall("wf-1", blocks), ReplayCall("wf-2", quick)])
        assert runner.healthy()
    finally:
        release.set()
        runner.stop()

    assert overran.status is WorkflowStatus.FAILED
    assert (overran.error or "").startswith(
        "workflow code did not finish replaying within 5s (--replay-timeout)"
    )
    assert done == DONE
    assert threads == ["conveyor-replay-1", "conveyor-replay-2"]
    assert runner.timeouts == 1


async def test_an_overrunning_busy_loop_is_interrupted_so_its_thread_ends() -> None:
    """Python cannot kill a thread; the runner raises ReplayTimedOut into it, which stops a
    pure-Python loop at its next bytecode instead of leaving it burning CPU for ever."""
    give_up = threading.Event()
    spinning: list[threading.Thread] = []

    def spins() -> ReplayOutcome:
        spinning.append(threading.current_thread())
        while not give_up.is_set():
            pass
        return DONE

    runner = ReplayRunner(timeout=5)
    try:
        (overran,) = await runner.run([ReplayCall("wf-1", spins)])
        await eventually(lambda: not spinning[0].is_alive(), timeout=60)
    finally:
        give_up.set()
        runner.stop()

    assert overran.status is WorkflowStatus.FAILED


async def test_a_replay_cancelled_as_its_result_arrives_is_cancelled_not_returned() -> None:
    """The coordinator stops by cancelling its replay loop and awaiting it.

    ``asyncio.wait_for`` (Python 3.11) returns the result, swallowing the cancellation, when
    the replay finishes between the cancel and the task's wake-up: the replay loop then
    carried on and ``Coordinator.stop()`` waited for it forever.
    """
    returned = threading.Event()

    def finishes() -> ReplayOutcome:
        returned.set()
        return DONE

    runner = ReplayRunner(timeout=60)
    try:
        replay = asyncio.create_task(runner.run([ReplayCall("wf-1", finishes)]))
        await asyncio.sleep(0)  # submitted: the runner's thread takes it
        # Hold the event loop until the result is on its way back, then cancel first.
        returned.wait(30)
        time.sleep(0.2)  # noqa: ASYNC251 - blocking the loop is the point: the cancel must come first
        replay.cancel()
        with pytest.raises(asyncio.CancelledError):
            await replay
    finally:
        runner.stop()
