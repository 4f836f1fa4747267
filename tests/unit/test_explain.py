"""The explainer's verdicts for the moments a live test cannot hold still.

A workflow sits in the replay queue (with its code loaded) only for the
milliseconds until the replay loop takes it, and a shard has no leaseholder among
live executors of its kind only while leases move. ``explain`` is a pure function
of stored facts and executor presences, so these cases are checked on facts built
here; every other situation is covered end to end in tests/core/test_explain.py.
"""

from __future__ import annotations

from dataclasses import replace

from conveyor.coordinator.explain import ExecutorPresence, Situation, Wait, explain
from conveyor.coordinator.model import StepKind, WorkflowStatus
from conveyor.coordinator.store.inspection import QueuedTask, StepInProgress, WorkflowFacts
from conveyor.coordinator.store.workflows import WorkflowRecord

NOW = 1_700_000_000_000_000
WORKFLOW = WorkflowRecord(
    id="w1",
    name="research",
    status=WorkflowStatus.RUNNING,
    args_json="{}",
    result_json=None,
    error=None,
    shard=3,
    idempotency_key=None,
    created_at=NOW - 5_000_000,
    completed_at=None,
    step_count=1,
)


def queued_step(kind: str = "llm") -> StepInProgress:
    task = QueuedTask(
        kind=kind,
        shard=3,
        attempt=1,
        max_attempts=5,
        rate_limit_waits=0,
        max_rate_limit_waits=20,
        available_at=NOW - 1_000_000,
        claimed_by=None,
        claimed_at=None,
        last_error=None,
        tasks_ahead=12,
    )
    return StepInProgress(1, "analyze_b", StepKind.LLM, None, task)


def test_a_workflow_waiting_for_its_replay_says_how_many_are_ahead() -> None:
    facts = WorkflowFacts(WORKFLOW, [], in_replay_queue=True, replay_queue_ahead=41)

    explanation = explain(facts, [], ["research"], NOW, lease_ttl=10)

    assert explanation.situation is Situation.REPLAY_QUEUED
    assert explanation.summary == (
        "waiting in the replay queue behind 41 older workflows: the coordinator runs its code next, "
        "to start its next steps or finish it."
    )


def test_a_queued_step_whose_shard_is_between_leaseholders_says_the_lease_is_moving() -> None:
    elsewhere = ExecutorPresence("e1", True, True, frozenset({"llm"}), frozenset({0, 1}), 0.4)
    facts = WorkflowFacts(WORKFLOW, [queued_step()], in_replay_queue=False, replay_queue_ahead=0)

    (step,) = explain(facts, [elsewhere], ["research"], NOW, lease_ttl=10).steps

    assert step.wait is Wait.NO_EXECUTOR
    assert step.text == (
        "step 1 `analyze_b` (llm) is queued on shard 3 behind 12 older tasks, but no live executor holds "
        "shard 3 (live executors run `llm` tasks but the shard's lease is being reassigned)"
    )


def test_a_draining_executor_still_running_a_step_is_named_as_draining() -> None:
    step = queued_step()
    assert step.task is not None
    task = replace(step.task, claimed_by="e1", claimed_at=NOW - 2_500_000)
    claimed = replace(step, task=task)
    draining = ExecutorPresence("e1", False, True, frozenset({"llm"}), frozenset(), 0.3)
    facts = WorkflowFacts(WORKFLOW, [claimed], in_replay_queue=False, replay_queue_ahead=0)

    (verdict,) = explain(facts, [draining], ["research"], NOW, lease_ttl=10).steps

    assert verdict.wait is Wait.RUNNING
    assert verdict.text == (
        "step 1 `analyze_b` (llm) is running on executor e1 (draining) for 2.5 s, attempt 1 of 5; "
        "last heartbeat 0.3 s ago"
    )
