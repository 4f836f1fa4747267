"""Task handlers that take a TaskContext: which step they run, which attempt, and a stable key.

The point of the context is an idempotent side effect: a handler that charges a card, then
crashes before reporting, runs again; with the step's idempotency key the second attempt
finds the first charge instead of charging twice. These tests run that story through a real
coordinator and executor (async and thread-run handlers), and check the key against the journal.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from conveyor import RetryPolicy, TaskContext, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.errors import ConfigurationError
from support import registry_of
from toolkit import MakeStack, handlers_of, wait_finished

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.05, multiplier=1.0, max_backoff=0.05)


class Ledger:
    """An external payment service that deduplicates by idempotency key, as Stripe's does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.charges: dict[str, int] = {}
        #: Every attempt, as the handler saw its context.
        self.attempts: list[TaskContext] = []

    def charge(self, key: str, amount: int) -> str:
        with self._lock:
            self.charges.setdefault(key, amount)
            return f"charge-{len(self.charges)}"


LEDGER = Ledger()


@pytest.fixture(autouse=True)
def fresh_ledger() -> None:
    global LEDGER
    LEDGER = Ledger()


def charge_then_maybe_crash(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """The side effect first, then (on the first attempt) a crash before the result is reported."""
    LEDGER.attempts.append(ctx)
    receipt = LEDGER.charge(ctx.idempotency_key, payload["amount"])
    if ctx.attempt == 1:
        raise ConnectionError("lost the connection after charging")
    return {"receipt": receipt, "attempt": ctx.attempt}


@task_handler("charge", context=True)
async def charge_async(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    return charge_then_maybe_crash(payload, ctx)


@task_handler("charge-in-thread", context=True)
def charge_in_thread(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    return charge_then_maybe_crash(payload, ctx)


@workflow
async def checkout(ctx: WorkflowContext, kind: str, amounts: list[int]) -> list[Any]:
    receipts = []
    for index, amount in enumerate(amounts):
        receipts.append(await ctx.task(kind, {"amount": amount}, name=f"pay-{index}", retry=FAST_RETRY))
    return receipts


WORKFLOWS = registry_of(checkout)


@pytest.mark.parametrize("kind", ["charge", "charge-in-thread"])
async def test_a_retried_side_effect_happens_once_with_the_steps_idempotency_key(
    make_stack: MakeStack, kind: str
) -> None:
    """Each step fails after its side effect on attempt 1; the retry reuses the key: one charge per step."""
    stack = await make_stack(WORKFLOWS)
    stack.start_executor(handlers=handlers_of(charge_async, charge_in_thread), llm=False)
    first = await stack.client.start_workflow("checkout", {"kind": kind, "amounts": [10, 20]})
    second = await stack.client.start_workflow("checkout", {"kind": kind, "amounts": [10]})
    for started in (first, second):
        # Six attempts and their replays in turn: a loaded machine needs more than the default wait.
        finished = await wait_finished(stack.client, started.workflow_id, within=90)
        assert finished.status is WorkflowStatus.COMPLETED, finished.error
        # Attempt 2 succeeds; on a loaded machine a lost lease may spend one more attempt.
        assert all(receipt["attempt"] >= 2 for receipt in finished.result), finished.result

    # One charge per step, though every step's handler charged at least twice.
    expected_keys = [f"{first.workflow_id}:0", f"{first.workflow_id}:1", f"{second.workflow_id}:0"]
    assert sorted(LEDGER.charges) == sorted(expected_keys)
    assert sorted(LEDGER.charges.values()) == [10, 10, 20]

    # What each attempt was told matches the journal.
    journal = (await stack.client.get_workflow(first.workflow_id, include_steps=True)).steps
    seen = [c for c in LEDGER.attempts if c.workflow_id == first.workflow_id]
    for step in journal:
        attempts = sorted(c.attempt for c in seen if c.step_number == step.number)
        assert attempts[:2] == [1, 2] and attempts[-1] == step.attempt, (step.number, attempts)
    for context in seen:
        step = journal[context.step_number]
        assert (context.step_name, context.kind, context.max_attempts) == (step.name, kind, 3)
        assert context.idempotency_key == f"{first.workflow_id}:{step.number}"


def test_the_key_names_the_step_not_the_attempt() -> None:
    """Same workflow and step: same key, whatever the attempt; any other step: another key."""
    attempt_one = TaskContext("wf", 3, "pay", "charge", attempt=1, max_attempts=3)
    attempt_two = TaskContext("wf", 3, "pay", "charge", attempt=2, max_attempts=3)
    assert attempt_one.idempotency_key == attempt_two.idempotency_key == "wf:3"
    assert TaskContext("wf", 4, "pay", "charge", 1, 3).idempotency_key != attempt_one.idempotency_key
    assert TaskContext("wf:3", 0, "pay", "charge", 1, 3).idempotency_key != attempt_one.idempotency_key


def test_a_signature_that_does_not_match_the_declaration_is_refused_at_import() -> None:
    """Declared with context=True but one parameter, or a second required one without it: start-up errors."""
    with pytest.raises(ConfigurationError, match=r"context=True.*give it a second parameter"):

        @task_handler("one-parameter", context=True)
        async def one_parameter(payload: Any) -> None: ...

    declare = r"declare it @task_handler\('needs-context', context=True\)"
    with pytest.raises(ConfigurationError, match=declare):

        @task_handler("needs-context")
        async def needs_context(payload: Any, ctx: TaskContext) -> None: ...

    @task_handler("optional-second")
    def optional_second(payload: Any, extra: int = 0) -> int:  # a default: still callable with the payload
        return extra
