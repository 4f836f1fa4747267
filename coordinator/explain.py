"""``ExplainWorkflow``: why a workflow is where it is, in plain words.

The stored facts (:mod:`conveyor.coordinator.store.inspection`) say where each step in
progress is: queued, claimed, waiting out a backoff, sleeping. The coordinator's
memory says who could move it: which live executor leases the step's shard for
its task kind, and when each executor was last heard from. This module puts the
two together into a verdict per step and a summary for the workflow, as
structured fields and as sentences an operator can act on. It does no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from . import retries
from .clock import to_datetime
from .model import StepKind, WorkflowStatus, child_workflow_id
from .store.inspection import StepInProgress, WorkflowFacts
from .store.workflows import WorkflowRecord


class Situation(StrEnum):
    """Where a workflow stands as a whole (``conveyor.v1.WorkflowSituation``)."""

    STEPS_IN_PROGRESS = "steps_in_progress"
    REPLAY_QUEUED = "replay_queued"
    CODE_NOT_LOADED = "code_not_loaded"
    STRANDED = "stranded"
    FINISHED = "finished"


class Wait(StrEnum):
    """What one step in progress waits for (``conveyor.v1.StepWait``)."""

    QUEUED = "queued"
    NO_EXECUTOR = "no_executor"
    RUNNING = "running"
    EXECUTOR_LOST = "executor_lost"
    RETRY_BACKOFF = "retry_backoff"
    RATE_LIMITED = "rate_limited"
    SLEEPING = "sleeping"
    SIGNAL = "signal"
    CHILD = "child"


@dataclass(frozen=True)
class ExecutorPresence:
    """What the coordinator knows of one executor right now."""

    executor_id: str
    #: Connected and not draining: it is handed new tasks.
    live: bool
    #: Its stream is open (live or draining): it still runs and reports what it holds.
    connected: bool
    task_kinds: frozenset[str]
    shards: frozenset[int]
    seconds_since_heartbeat: float


@dataclass(frozen=True)
class StepExplanation:
    number: int
    name: str
    kind: StepKind
    #: "llm" or the handler kind; empty for sleeps.
    task_kind: str
    wait: Wait
    #: The verdict in plain words.
    text: str
    shard: int | None = None
    tasks_ahead: int = 0
    shard_executors: tuple[str, ...] = ()
    executor_id: str = ""
    since_last_heartbeat: float | None = None
    available_at: int | None = None
    claimed_at: int | None = None
    #: RUNNING, EXECUTOR_LOST: when the coordinator takes the attempt back without a result.
    deadline_at: int | None = None
    attempt: int = 0
    max_attempts: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class Explanation:
    workflow: WorkflowRecord
    situation: Situation
    summary: str
    steps: tuple[StepExplanation, ...]
    replay_queue_ahead: int
    generated_at: int


def explain(
    facts: WorkflowFacts,
    executors: Sequence[ExecutorPresence],
    registered_workflows: Collection[str],
    now: int,
    lease_ttl: float,
) -> Explanation:
    """The verdict on ``facts``, given the executors connected ``now``."""
    workflow = facts.workflow
    by_id = {presence.executor_id: presence for presence in executors}
    steps = tuple(
        _explain_step(facts.workflow.id, step, executors, by_id, now, lease_ttl) for step in facts.in_progress
    )
    if workflow.status is not WorkflowStatus.RUNNING:
        situation, summary = Situation.FINISHED, _finished(workflow)
    elif steps:
        situation = Situation.STEPS_IN_PROGRESS
        waiting = "1 step" if len(steps) == 1 else f"{len(steps)} steps"
        summary = f"running; waiting for {waiting}: " + "; ".join(step.text for step in steps) + "."
    elif facts.in_replay_queue and workflow.name not in registered_workflows:
        situation = Situation.CODE_NOT_LOADED
        summary = (
            f"waiting in the replay queue, but this coordinator has not loaded the code of workflow "
            f"`{workflow.name}`, so nothing will replay it: restart the coordinator with the "
            f"--workflows module that defines `{workflow.name}`, or give it up with "
            "`conveyor admin clear-replay-queue` (which cancels it)."
        )
    elif facts.in_replay_queue:
        situation = Situation.REPLAY_QUEUED
        summary = (
            f"waiting in the replay queue behind {_count(facts.replay_queue_ahead, 'older workflow')}: "
            "the coordinator runs its code next, to start its next steps or finish it."
        )
    else:
        situation = Situation.STRANDED
        summary = (
            "running, but no step is in progress and it is not in the replay queue, so nothing will "
            "resume it. This breaks an invariant (`conveyor admin diagnose` lists it): keep the "
            f"coordinator log for a bug report, then cancel it with `conveyor cancel {workflow.id}`."
        )
    if facts.buffered_signals:
        summary += " " + _buffered(facts.buffered_signals)
    return Explanation(workflow, situation, summary, steps, facts.replay_queue_ahead, now)


def _buffered(signals: Sequence[tuple[str, int]]) -> str:
    """Signals sent that the code has not waited for (yet): a misspelt name shows up here."""
    names = ", ".join(name if count == 1 else f"{name} x{count}" for name, count in signals)
    total = sum(count for _, count in signals)
    return f"{_count(total, 'signal')} buffered (sent, not waited for yet): {names}."


def _finished(workflow: WorkflowRecord) -> str:
    when = f" at {_clock(workflow.completed_at)}" if workflow.completed_at else ""
    took = ""
    if workflow.completed_at:
        took = f", {_seconds((workflow.completed_at - workflow.created_at) / 1e6)} after it started"
    if workflow.status is WorkflowStatus.COMPLETED:
        return f"completed{when}{took}, in {_count(workflow.step_count, 'step')}."
    return f"{workflow.status.value}{when}{took}: {workflow.error or 'no reason recorded'}"


def _explain_step(
    workflow_id: str,
    step: StepInProgress,
    executors: Sequence[ExecutorPresence],
    by_id: dict[str, ExecutorPresence],
    now: int,
    lease_ttl: float,
) -> StepExplanation:
    title = f"step {step.number} `{step.name}`"
    if step.kind is StepKind.SLEEP:
        wake_at = step.wake_at or now
        due = (
            f"until {_clock(wake_at)} (in {_seconds((wake_at - now) / 1e6)})"
            if wake_at > now
            else "past its wake-up time; the coordinator fires its timer shortly"
        )
        return StepExplanation(
            step.number,
            step.name,
            step.kind,
            "",
            Wait.SLEEPING,
            f"{title} sleeps {due}",
            available_at=wake_at,
        )
    if step.kind is StepKind.SIGNAL:
        deadline = ""
        if step.wake_at is not None:
            deadline = (
                f"; it times out at {_clock(step.wake_at)} (in {_seconds((step.wake_at - now) / 1e6)})"
                if step.wake_at > now
                else "; its timeout has passed and the coordinator fires it shortly"
            )
        return StepExplanation(
            step.number,
            step.name,
            step.kind,
            "",
            Wait.SIGNAL,
            f"{title} is waiting for signal `{step.name}` since {_clock(step.created_at)}{deadline}; "
            f"send it with `conveyor signal WORKFLOW_ID {step.name} --payload JSON`",
            available_at=step.wake_at,
        )
    if step.kind is StepKind.CHILD:
        child = child_workflow_id(workflow_id, step.number)
        return StepExplanation(
            step.number,
            step.name,
            step.kind,
            "",
            Wait.CHILD,
            f"{title} waits for child workflow {child} (`conveyor explain {child}` says why it is not done)",
        )
    task = step.task
    if task is None:
        return StepExplanation(
            step.number,
            step.name,
            step.kind,
            "",
            Wait.NO_EXECUTOR,
            f"{title} is in progress but has no task in the queue, so no executor will ever run it "
            "(a broken invariant: see `conveyor admin diagnose`)",
        )
    title = f"{title} ({task.kind})"
    attempts = f"attempt {task.attempt} of {task.max_attempts}"
    last_error = task.last_error or ""
    # Every verdict below fills in the rest of this.
    base = StepExplanation(
        step.number,
        step.name,
        step.kind,
        task.kind,
        Wait.QUEUED,
        "",
        shard=task.shard,
        attempt=task.attempt,
        max_attempts=task.max_attempts,
        last_error=last_error,
    )
    if task.claimed_by is not None:
        holder = by_id.get(task.claimed_by)
        since = holder.seconds_since_heartbeat if holder is not None else None
        running_for = _seconds((now - task.claimed_at) / 1e6) if task.claimed_at else "a while"
        deadline = _deadline(task.deadline_at, now, task.attempt, task.max_attempts)
        if holder is not None and holder.connected:
            draining = "" if holder.live else " (draining)"
            return replace(
                base,
                wait=Wait.RUNNING,
                text=f"{title} is running on executor {holder.executor_id}{draining} for {running_for}, "
                f"{attempts}; last heartbeat {_seconds(holder.seconds_since_heartbeat)} ago{deadline}",
                executor_id=holder.executor_id,
                since_last_heartbeat=since,
                claimed_at=task.claimed_at,
                deadline_at=task.deadline_at,
            )
        if since is not None:
            fate = (
                f"its lease expires in {_seconds(lease_ttl - since)}"
                if since < lease_ttl
                else "its lease has expired"
            )
            absence = f"which is not connected (last heard from {_seconds(since)} ago); {fate}"
        else:
            absence = "which this coordinator has not heard from since it started"
        return replace(
            base,
            wait=Wait.EXECUTOR_LOST,
            text=f"{title} was claimed by executor {task.claimed_by}, {absence}, and the task then goes "
            f"back to the queue unless the executor reconnects ({attempts}){deadline}",
            executor_id=task.claimed_by,
            since_last_heartbeat=since,
            claimed_at=task.claimed_at,
            deadline_at=task.deadline_at,
        )
    if task.available_at > now:
        due = f"at {_clock(task.available_at)} (in {_seconds((task.available_at - now) / 1e6)})"
        cause = retries.attempt_error(last_error)
        if retries.is_rate_limit_note(last_error):
            return replace(
                base,
                wait=Wait.RATE_LIMITED,
                text=f"{title} was rate limited ({cause}); it is tried again {due} without spending an "
                f"attempt (rate-limit wait {task.rate_limit_waits} of {task.max_rate_limit_waits})",
                available_at=task.available_at,
            )
        return replace(
            base,
            wait=Wait.RETRY_BACKOFF,
            text=f"{title} is waiting for retry #{task.attempt - 1} ({attempts}) {due} after: {cause}",
            available_at=task.available_at,
        )
    holders = [
        presence
        for presence in executors
        if presence.live and task.kind in presence.task_kinds and task.shard in presence.shards
    ]
    place = (
        f"{title} is queued on shard {task.shard} behind {_count(task.tasks_ahead, 'older task')}"
        if task.tasks_ahead
        else f"{title} is next in line on shard {task.shard}"
    )
    retried = f" ({attempts}; the last one ended: {retries.attempt_error(last_error)})" if last_error else ""
    if not holders:
        runners = [p for p in executors if p.live and task.kind in p.task_kinds]
        hint = (
            f"live executors run `{task.kind}` tasks but the shard's lease is being reassigned"
            if runners
            else f"no live executor runs `{task.kind}` tasks: start one"
            + (" (with --handlers for this kind)" if task.kind != "llm" else "")
        )
        return replace(
            base,
            wait=Wait.NO_EXECUTOR,
            text=f"{place}{retried}, but no live executor holds shard {task.shard} ({hint})",
            tasks_ahead=task.tasks_ahead,
        )
    leased_by = ", ".join(
        f"{p.executor_id} (last heartbeat {_seconds(p.seconds_since_heartbeat)} ago)" for p in holders
    )
    return replace(
        base,
        wait=Wait.QUEUED,
        text=f"{place}{retried}; shard {task.shard} is leased by executor {leased_by}",
        tasks_ahead=task.tasks_ahead,
        shard_executors=tuple(p.executor_id for p in holders),
        since_last_heartbeat=holders[0].seconds_since_heartbeat,
    )


def _deadline(deadline_at: int | None, now: int, attempt: int, max_attempts: int) -> str:
    """The start-to-close deadline of a claimed attempt, and what happens when it passes."""
    if deadline_at is None:
        return ""
    fate = "retried" if attempt < max_attempts else "failed (its last attempt)"
    if deadline_at > now:
        when = f"at {_clock(deadline_at)} (in {_seconds((deadline_at - now) / 1e6)})"
        return f"; without a result by its deadline {when} it is taken back and {fate}"
    return f"; its deadline passed at {_clock(deadline_at)}: it is being taken back and {fate}"


def _clock(us: int) -> str:
    return to_datetime(us).strftime("%H:%M:%S UTC")


def _seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")
