"""``conveyor.coordinator.replay.replay()``: a pure function from (workflow, arguments, journal) to
an outcome.

No database and no event loop of the test's own: every test builds a journal by hand (or
from the steps an earlier replay asked for) and checks what the next replay decides.

These journals record no activations (``delivered_in``), as journals written before activations
existed: replay delivers their outcomes in waves (see ``WorkflowRun._catch_up_legacy``), and
:func:`run` leaves out the deliveries an outcome records. Activations, races and asyncio timers
are tested in ``test_replay_activations.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.coordinator.model import StepKind, StepStatus, WorkflowStatus, canonical_json
from conveyor.coordinator.replay import JournalEntry, NewStep, ReplayOutcome, replay
from conveyor.errors import StepFailed
from conveyor.workflow import (
    DEFAULT_LLM_RETRY,
    DEFAULT_TASK_RETRY,
    LlmResponse,
    RetryPolicy,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowRegistry,
)

NOW_US = 1_700_000_000_000_000
MODEL = "claude-test"


def definition_of(function: Callable[..., Any]) -> WorkflowDefinition:
    registry = WorkflowRegistry()
    registry.register(function)
    found = registry.get(function.__name__)
    assert found is not None
    return found


def run(
    function: Callable[..., Any],
    journal: Sequence[JournalEntry] = (),
    args: list[Any] | dict[str, Any] | None = None,
    *,
    now_us: int = NOW_US,
    rng: random.Random | None = None,
) -> ReplayOutcome:
    outcome = replay(
        definition_of(function),
        "wf-1",
        args if args is not None else {},
        journal,
        now_us=now_us,
        rng=rng or random.Random(0),
    )
    return dataclasses.replace(outcome, delivered=(), activations=None)


def llm_reply(text: str) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }


def completed(step: NewStep, result: Any = None) -> JournalEntry:
    """The journal entry an executor (or the replay itself, for now/random) leaves behind."""
    result_json = step.result_json if step.result_json is not None else canonical_json(result)
    return JournalEntry(step.number, step.kind, step.name, step.args_json, StepStatus.COMPLETED, result_json)


def running(step: NewStep) -> JournalEntry:
    return JournalEntry(step.number, step.kind, step.name, step.args_json, StepStatus.RUNNING)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --- workflows used by several tests ------------------------------------------------------------


async def extract_then_count(ctx: WorkflowContext, topic: str) -> list[Any]:
    claims = await ctx.llm(model=MODEL, max_tokens=50, name="extract", messages=user(f"claims about {topic}"))
    count = await ctx.task("count", {"text": claims.text}, name="count")
    return [type(claims).__name__, claims.text, count]


async def three_in_parallel(ctx: WorkflowContext) -> list[Any]:
    return list(await asyncio.gather(*(ctx.task("work", i, name=f"part{i}") for i in range(3))))


async def lookup_at_step_one(ctx: WorkflowContext, query: str) -> Any:
    await ctx.task("prepare", None, name="prepare")
    return await ctx.task("search", query, name="lookup")


async def lookup_at_step_one_swallowing_errors(ctx: WorkflowContext, query: str) -> Any:
    await ctx.task("prepare", None, name="prepare")
    try:
        return await ctx.task("search", query, name="lookup")
    except Exception as error:
        return f"recovered from {type(error).__name__}"


# --- first replay, recorded steps, completion ---------------------------------------------------


def test_fresh_workflow_asks_for_its_first_step_only() -> None:
    outcome = run(extract_then_count, args={"topic": "tides"})

    assert outcome.status is WorkflowStatus.RUNNING
    assert outcome.new_steps == (
        NewStep(
            number=0,
            kind=StepKind.LLM,
            name="extract",
            args_json=canonical_json(
                {"model": MODEL, "max_tokens": 50, "messages": user("claims about tides")}
            ),
            task_kind="llm",
            retry=DEFAULT_LLM_RETRY,
        ),
    )


def test_recorded_step_is_not_asked_for_again_and_its_result_flows_into_the_next_step() -> None:
    (extract,) = run(extract_then_count, args={"topic": "tides"}).new_steps

    outcome = run(extract_then_count, [completed(extract, llm_reply("moon pulls water"))], {"topic": "tides"})

    assert outcome.status is WorkflowStatus.RUNNING
    assert [(s.number, s.kind, s.name, s.task_kind) for s in outcome.new_steps] == [
        (1, StepKind.TASK, "count", "count")
    ]
    assert outcome.new_steps[0].args_json == canonical_json(
        {"kind": "count", "payload": {"text": "moon pulls water"}}
    )


def test_workflow_completes_with_recorded_results_and_llm_results_are_llm_responses() -> None:
    (extract,) = run(extract_then_count, args={"topic": "tides"}).new_steps
    journal = [completed(extract, llm_reply("moon pulls water"))]
    (count,) = run(extract_then_count, journal, {"topic": "tides"}).new_steps
    journal.append(completed(count, 3))

    outcome = run(extract_then_count, journal, {"topic": "tides"})

    assert outcome == ReplayOutcome(
        WorkflowStatus.COMPLETED, result_json=canonical_json(["LlmResponse", "moon pulls water", 3])
    )


def test_workflow_waiting_on_a_running_step_asks_for_nothing_new() -> None:
    (extract,) = run(extract_then_count, args={"topic": "tides"}).new_steps

    outcome = run(extract_then_count, [running(extract)], {"topic": "tides"})

    assert outcome == ReplayOutcome(WorkflowStatus.RUNNING)


def test_positional_arguments_are_passed_in_order() -> None:
    outcome = run(extract_then_count, args=["reefs"])

    assert "claims about reefs" in outcome.new_steps[0].args_json


# --- parallel steps -----------------------------------------------------------------------------


def test_gathered_steps_are_all_new_in_one_outcome_numbered_in_call_order() -> None:
    outcome = run(three_in_parallel)

    assert outcome.status is WorkflowStatus.RUNNING
    assert [(s.number, s.name, s.args_json) for s in outcome.new_steps] == [
        (0, "part0", canonical_json({"kind": "work", "payload": 0})),
        (1, "part1", canonical_json({"kind": "work", "payload": 1})),
        (2, "part2", canonical_json({"kind": "work", "payload": 2})),
    ]


def test_gathered_steps_wait_until_every_one_has_finished() -> None:
    parts = run(three_in_parallel).new_steps
    journal = [completed(parts[0], "a"), running(parts[1]), completed(parts[2], "c")]

    assert run(three_in_parallel, journal) == ReplayOutcome(WorkflowStatus.RUNNING)

    journal[1] = completed(parts[1], "b")
    assert run(three_in_parallel, journal) == ReplayOutcome(
        WorkflowStatus.COMPLETED, result_json=canonical_json(["a", "b", "c"])
    )


async def with_create_task(ctx: WorkflowContext) -> list[Any]:
    first = asyncio.create_task(ctx.task("work", "x", name="first"))
    second = asyncio.create_task(ctx.sleep(5, name="nap"))
    third = asyncio.create_task(ctx.llm(model=MODEL, max_tokens=5, name="third", messages=user("hi")))
    return [await first, await second, (await third).text]


async def with_task_group(ctx: WorkflowContext) -> list[Any]:
    async with asyncio.TaskGroup() as group:
        first = group.create_task(ctx.task("work", "x", name="first"))
        second = group.create_task(ctx.sleep(5, name="nap"))
        third = group.create_task(ctx.llm(model=MODEL, max_tokens=5, name="third", messages=user("hi")))
    return [first.result(), second.result(), third.result().text]


@pytest.mark.parametrize("workflow", [with_create_task, with_task_group], ids=["create_task", "TaskGroup"])
def test_steps_started_as_tasks_are_all_new_in_one_outcome_numbered_in_creation_order(
    workflow: Callable[..., Any],
) -> None:
    outcome = run(workflow)

    assert outcome.status is WorkflowStatus.RUNNING
    assert [(s.number, s.kind, s.name) for s in outcome.new_steps] == [
        (0, StepKind.TASK, "first"),
        (1, StepKind.SLEEP, "nap"),
        (2, StepKind.LLM, "third"),
    ]
    first, nap, third = outcome.new_steps
    journal = [completed(first, 1), completed(nap), completed(third, llm_reply("hello"))]
    assert run(workflow, journal) == ReplayOutcome(
        WorkflowStatus.COMPLETED, result_json=canonical_json([1, None, "hello"])
    )


# --- non-determinism ----------------------------------------------------------------------------

PREPARE = JournalEntry(
    0,
    StepKind.TASK,
    "prepare",
    canonical_json({"kind": "prepare", "payload": None}),
    StepStatus.COMPLETED,
    "null",
)
LOOKUP_ARGS = canonical_json({"kind": "search", "payload": "cats"})


@pytest.mark.parametrize(
    ("recorded", "expected_fragments"),
    [
        pytest.param(
            JournalEntry(1, StepKind.SLEEP, "lookup", LOOKUP_ARGS, StepStatus.COMPLETED, "null"),
            ["task step 'lookup'", "sleep step 'lookup'"],
            id="kind",
        ),
        pytest.param(
            JournalEntry(1, StepKind.TASK, "search", LOOKUP_ARGS, StepStatus.COMPLETED, '"x"'),
            ["task step 'lookup'", "task step 'search'"],
            id="name",
        ),
        pytest.param(
            JournalEntry(
                1,
                StepKind.TASK,
                "lookup",
                canonical_json({"kind": "search", "payload": "dogs"}),
                StepStatus.COMPLETED,
            ),
            ["task step 'lookup'", '"payload":"dogs"', '"payload":"cats"'],
            id="arguments",
        ),
    ],
)
@pytest.mark.parametrize(
    "workflow", [lookup_at_step_one, lookup_at_step_one_swallowing_errors], ids=["uncaught", "caught"]
)
def test_journal_mismatch_fails_the_workflow_with_a_non_determinism_error_naming_the_step(
    workflow: Callable[..., Any], recorded: JournalEntry, expected_fragments: list[str]
) -> None:
    """Catching the error in workflow code must not let a diverged workflow carry on."""
    outcome = run(workflow, [PREPARE, recorded], {"query": "cats"})

    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.new_steps == ()
    assert outcome.error is not None
    assert outcome.error.startswith("non-determinism at step 1:")
    for fragment in expected_fragments:
        assert fragment in outcome.error


def test_matching_journal_replays_without_error() -> None:
    recorded = JournalEntry(1, StepKind.TASK, "lookup", LOOKUP_ARGS, StepStatus.COMPLETED, '"found"')

    outcome = run(lookup_at_step_one, [PREPARE, recorded], {"query": "cats"})

    assert outcome == ReplayOutcome(WorkflowStatus.COMPLETED, result_json='"found"')


# --- failures -----------------------------------------------------------------------------------


async def raises_value_error(ctx: WorkflowContext) -> None:
    raise ValueError("bad input 42")


def test_exception_escaping_the_workflow_fails_it_with_type_and_message() -> None:
    outcome = run(raises_value_error)

    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.startswith("ValueError: bad input 42")
    assert "raises_value_error" in outcome.error  # the traceback says where


async def tolerates_failure(ctx: WorkflowContext) -> Any:
    try:
        await ctx.task("flaky", 1, name="flaky")
    except StepFailed as failure:
        fallback = await ctx.task("fallback", failure.error, name="fallback")
        return {"failed_step": failure.step_number, "failed_name": failure.step_name, "fallback": fallback}
    return "no failure"


@pytest.mark.parametrize(
    ("status", "error", "expected_error"),
    [
        (StepStatus.FAILED, "HTTP 400: bad request", "HTTP 400: bad request"),
        (StepStatus.CANCELLED, None, "cancelled"),
    ],
)
def test_failed_step_raises_step_failed_which_the_workflow_can_catch_and_carry_on(
    status: StepStatus, error: str | None, expected_error: str
) -> None:
    (flaky,) = run(tolerates_failure).new_steps
    failed = JournalEntry(0, StepKind.TASK, "flaky", flaky.args_json, status, error=error)

    outcome = run(tolerates_failure, [failed])

    assert outcome.status is WorkflowStatus.RUNNING
    assert [(s.number, s.name) for s in outcome.new_steps] == [(1, "fallback")]
    assert outcome.new_steps[0].args_json == canonical_json({"kind": "fallback", "payload": expected_error})
    done = run(tolerates_failure, [failed, completed(outcome.new_steps[0], "plan b")])
    assert done == ReplayOutcome(
        WorkflowStatus.COMPLETED,
        result_json=canonical_json({"failed_step": 0, "failed_name": "flaky", "fallback": "plan b"}),
    )


def test_uncaught_step_failure_fails_the_workflow_naming_the_step() -> None:
    (extract,) = run(extract_then_count, args={"topic": "tides"}).new_steps
    failed = JournalEntry(
        0, StepKind.LLM, "extract", extract.args_json, StepStatus.FAILED, error="HTTP 400: nope"
    )

    outcome = run(extract_then_count, [failed], {"topic": "tides"})

    assert outcome == ReplayOutcome(WorkflowStatus.FAILED, error="step 0 ('extract') failed: HTTP 400: nope")


# --- time, randomness, durable sleep ------------------------------------------------------------


async def stamps_and_draws(ctx: WorkflowContext) -> Any:
    now = ctx.now()
    draw = ctx.random()
    return await ctx.task("record", {"now": now.isoformat(), "draw": draw}, name="record")


def test_now_and_random_are_completed_steps_the_first_time() -> None:
    expected_draw = random.Random(7).random()

    outcome = run(stamps_and_draws, rng=random.Random(7))

    assert outcome.status is WorkflowStatus.RUNNING
    now, draw, record = outcome.new_steps
    assert (now.number, now.kind, now.result_json) == (0, StepKind.NOW, str(NOW_US))
    assert (draw.number, draw.kind, draw.result_json) == (1, StepKind.RANDOM, repr(expected_draw))
    assert (record.number, record.kind) == (2, StepKind.TASK)
    now_iso = datetime.fromtimestamp(NOW_US / 1_000_000, tz=UTC).isoformat()
    assert record.args_json == canonical_json(
        {"kind": "record", "payload": {"now": now_iso, "draw": expected_draw}}
    )


def test_now_and_random_replay_their_recorded_values_later() -> None:
    now, draw, record = run(stamps_and_draws, rng=random.Random(7)).new_steps

    later = run(
        stamps_and_draws,
        [completed(now), completed(draw)],
        now_us=NOW_US + 3_600_000_000,
        rng=random.Random(8),
    )

    assert later.new_steps == (record,)
    finished = run(
        stamps_and_draws,
        [completed(now), completed(draw), completed(record, "ok")],
        now_us=NOW_US + 7_200_000_000,
        rng=random.Random(9),
    )
    assert finished == ReplayOutcome(WorkflowStatus.COMPLETED, result_json='"ok"')


async def naps(ctx: WorkflowContext) -> str:
    await ctx.sleep(90)
    await ctx.sleep(1.5, name="short nap")
    return "rested"


def test_sleep_is_a_step_that_wakes_after_the_requested_time() -> None:
    (first,) = run(naps).new_steps
    assert (first.number, first.kind, first.name, first.wake_at_us) == (
        0,
        StepKind.SLEEP,
        "sleep",
        NOW_US + 90_000_000,
    )
    assert first.args_json == canonical_json({"seconds": 90})

    woken_at = NOW_US + 90_000_123
    (second,) = run(naps, [completed(first)], now_us=woken_at).new_steps
    assert (second.number, second.name, second.wake_at_us) == (1, "short nap", woken_at + 1_500_000)

    assert run(naps, [completed(first), completed(second)]) == ReplayOutcome(
        WorkflowStatus.COMPLETED, result_json='"rested"'
    )


# --- things workflow code must not do -----------------------------------------------------------


async def waits_on_an_event(ctx: WorkflowContext) -> None:
    await asyncio.Event().wait()


def test_awaiting_something_that_is_not_a_step_fails_the_workflow() -> None:
    outcome = run(waits_on_an_event)

    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.error is not None
    assert "not a Conveyor step" in outcome.error


@pytest.mark.parametrize(
    "args", [{"subject": "tides"}, {}, ["tides", "extra"]], ids=["unknown keyword", "missing", "too many"]
)
def test_arguments_that_do_not_fit_the_signature_fail_the_workflow(args: list[Any] | dict[str, Any]) -> None:
    outcome = run(extract_then_count, args=args)

    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.startswith("arguments do not match workflow 'extract_then_count'(ctx:")
    assert "topic" in outcome.error  # the signature, so the caller sees what was expected


async def returns_a_set(ctx: WorkflowContext) -> Any:
    return {1, 2}


async def returns_nan(ctx: WorkflowContext) -> Any:
    return {"score": float("nan")}


@pytest.mark.parametrize("workflow", [returns_a_set, returns_nan])
def test_return_value_that_is_not_json_fails_the_workflow(workflow: Callable[..., Any]) -> None:
    outcome = run(workflow)

    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.startswith("workflow returned a value that is not JSON-serializable")


async def llm_with_unserialisable_message(ctx: WorkflowContext) -> Any:
    try:
        await ctx.llm(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": object()}])
    except TypeError as error:
        return await ctx.task("report", str(error), name="report")
    return "no error"


def test_llm_call_with_non_json_arguments_raises_inside_the_workflow_and_takes_no_step() -> None:
    outcome = run(llm_with_unserialisable_message)

    assert outcome.status is WorkflowStatus.RUNNING
    (report,) = outcome.new_steps
    assert (report.number, report.name) == (0, "report")
    assert "ctx.llm() arguments must be JSON values" in report.args_json


# --- retry policies -----------------------------------------------------------------------------

CUSTOM = RetryPolicy(
    max_attempts=9, initial_backoff=0.5, multiplier=3.0, max_backoff=20.0, max_rate_limit_waits=4
)


async def with_policies(ctx: WorkflowContext) -> Any:
    return await asyncio.gather(
        ctx.llm(model=MODEL, max_tokens=5, name="custom llm", messages=user("a"), retry=CUSTOM, timeout=12.5),
        ctx.task("work", 1, name="custom task", retry=CUSTOM, timeout=3.0),
        ctx.llm(model=MODEL, max_tokens=5, name="default llm", messages=user("b")),
        ctx.task("work", 2, name="default task"),
    )


def test_retry_policy_and_timeout_given_to_a_step_reach_the_new_step() -> None:
    custom_llm, custom_task, _, _ = run(with_policies).new_steps

    assert (custom_llm.retry, custom_llm.timeout) == (CUSTOM, 12.5)
    assert (custom_task.retry, custom_task.timeout) == (CUSTOM, 3.0)


def test_steps_without_a_retry_policy_get_five_attempts_for_llm_and_three_for_tasks() -> None:
    _, _, default_llm, default_task = run(with_policies).new_steps

    assert default_llm.retry == DEFAULT_LLM_RETRY
    assert default_llm.retry is not None
    assert default_llm.retry.max_attempts == 5
    assert default_task.retry == DEFAULT_TASK_RETRY
    assert default_task.retry is not None
    assert default_task.retry.max_attempts == 3
    assert (default_llm.timeout, default_task.timeout) == (None, None)


# --- property: replaying any prefix of a finished journal reproduces the rest ---------------------


class _SameDraw(random.Random):
    """Every draw is the same, so a ``random`` step taken in any replay records the same value."""

    def random(self) -> float:
        return 0.25


async def program(ctx: WorkflowContext, stages: list[list[list[str]]]) -> list[str]:
    """Runs stages one after another; the steps of a stage start together (``asyncio.gather``).

    Every step's arguments carry the results seen so far, so a replay that did not
    return the recorded results would ask for different arguments.
    """
    seen: list[str] = []
    for stage in stages:
        pending: list[Awaitable[Any]] = []
        for kind, label in stage:
            context = "|".join(seen)
            if kind == "llm":
                pending.append(ctx.llm(model=MODEL, max_tokens=5, name=label, messages=user(context)))
            elif kind == "task":
                pending.append(ctx.task("work", context, name=label))
            elif kind == "sleep":
                pending.append(ctx.sleep(len(seen), name=label))
            elif kind == "now":
                seen.append(ctx.now().isoformat())
            else:
                seen.append(repr(ctx.random()))
        for result in await asyncio.gather(*pending):
            seen.append(result.text if isinstance(result, LlmResponse) else repr(result))
    return seen


def result_for(step: NewStep) -> Any:
    if step.kind is StepKind.LLM:
        return llm_reply(f"llm{step.number}")
    if step.kind is StepKind.TASK:
        return f"task{step.number}"
    return None


def drive(
    stages: list[list[list[str]]], journal: list[JournalEntry]
) -> tuple[list[JournalEntry], ReplayOutcome]:
    """Replay, complete every new step, and repeat until the workflow finishes."""
    journal = list(journal)
    for _ in range(100):
        outcome = run(program, journal, {"stages": stages}, rng=_SameDraw())
        if outcome.status is not WorkflowStatus.RUNNING:
            return journal, outcome
        assert outcome.new_steps, "a workflow with nothing running must ask for a step"
        journal.extend(completed(step, result_for(step)) for step in outcome.new_steps)
    raise AssertionError("workflow did not finish")


stage_strategy = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from(["llm", "task", "sleep", "now", "random"]), st.sampled_from(["a", "b", "c"])
        ).map(list),
        min_size=1,
        max_size=3,
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(stages=stage_strategy, data=st.data())
def test_replaying_any_prefix_of_a_finished_journal_reproduces_exactly_the_remaining_steps(
    stages: list[list[list[str]]], data: st.DataObject
) -> None:
    full_journal, final = drive(stages, [])
    assert final.status is WorkflowStatus.COMPLETED
    prefix = data.draw(st.integers(0, len(full_journal)), label="prefix length")

    outcome = run(program, full_journal[:prefix], {"stages": stages}, rng=_SameDraw())

    if prefix == len(full_journal):
        assert outcome == final
    else:
        asked = [completed(step, result_for(step)) for step in outcome.new_steps]
        assert asked, "replaying a prefix must ask for the next step"
        assert asked == full_journal[prefix : prefix + len(asked)]
    assert drive(stages, full_journal[:prefix]) == (full_journal, final)


# --- replay reproduces the original interleaving (issue 9, item 8) -------------------------------


async def two_step_branch(ctx: WorkflowContext, branch: str) -> list[Any]:
    first = await ctx.task("work", f"{branch}1", name=f"{branch}1")
    second = await ctx.task("work", f"{branch}2 after {first}", name=f"{branch}2")
    return [first, second]


async def gather_of_two_step_branches(ctx: WorkflowContext) -> list[Any]:
    return list(await asyncio.gather(two_step_branch(ctx, "a"), two_step_branch(ctx, "b")))


def test_gather_over_branches_of_two_steps_replays_in_the_order_it_first_ran() -> None:
    """The first run takes a1, b1 (wave 1), then a2, b2 (wave 2). A replay that resolved a1 at once
    would let branch a take position 1 for a2 while the journal holds b1 there."""
    first_wave = run(gather_of_two_step_branches).new_steps
    assert [step.name for step in first_wave] == ["a1", "b1"]
    journal = [completed(step, f"r{step.name}") for step in first_wave]

    second = run(gather_of_two_step_branches, journal)

    assert second.error is None, second.error
    assert [(step.number, step.name) for step in second.new_steps] == [(2, "a2"), (3, "b2")]
    journal += [completed(step, f"r{step.name}") for step in second.new_steps]
    assert run(gather_of_two_step_branches, journal) == ReplayOutcome(
        WorkflowStatus.COMPLETED, result_json=canonical_json([["ra1", "ra2"], ["rb1", "rb2"]])
    )


# --- a journal longer than the code is non-determinism (issue 9, item 9) --------------------------


async def only_extract(ctx: WorkflowContext, topic: str) -> str:
    reply = await ctx.llm(model=MODEL, max_tokens=50, name="extract", messages=user(f"claims about {topic}"))
    return reply.text


def test_journal_with_steps_the_code_no_longer_asks_for_fails_as_non_determinism_naming_the_step() -> None:
    """extract_then_count ran both steps; code that dropped 'count' must not complete silently."""
    (extract,) = run(extract_then_count, args={"topic": "tides"}).new_steps
    journal = [completed(extract, llm_reply("moon pulls water"))]
    (count,) = run(extract_then_count, journal, {"topic": "tides"}).new_steps
    journal.append(completed(count, 3))

    outcome = run(only_extract, journal, {"topic": "tides"})

    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.startswith(
        "non-determinism at step 1: the workflow finished without asking for task step 'count' that the "
        "journal records there"
    ), outcome.error


# --- durations are bounded where workflow code gives them (issue 9, item 1) ----------------------


async def task_with_timeout(ctx: WorkflowContext, timeout: float) -> Any:
    return await ctx.task("work", None, timeout=timeout)


@pytest.mark.parametrize("timeout", [0.0, -1.0, 1e13, float("inf"), float("nan")])
def test_step_timeout_outside_the_bound_fails_the_workflow_and_takes_no_step(timeout: float) -> None:
    outcome = run(task_with_timeout, args={"timeout": timeout})

    assert (outcome.status, outcome.new_steps) == (WorkflowStatus.FAILED, ())
    assert outcome.error is not None
    assert (
        f"step timeout is {timeout!r} seconds; it must be more than 0 and at most 315360000" in outcome.error
    )


async def exits_in_finally(ctx: WorkflowContext) -> None:
    try:
        await ctx.task("work", None)
    finally:
        raise SystemExit(1)


def test_sys_exit_while_the_replay_is_torn_down_does_not_escape() -> None:
    """The workflow waits on a step; tearing the replay down runs its finally block, which exits."""
    outcome = run(exits_in_finally)

    assert outcome.status is WorkflowStatus.RUNNING
    assert [step.kind for step in outcome.new_steps] == [StepKind.TASK]
