"""A workflow's journal as the store keeps it, in memory, for replay tests without a database.

:class:`JournalModel` applies each replay outcome the way ``ReplayQueue.apply`` does (new
steps, the activation that delivered each outcome, withdrawn steps cancelled, a finished
workflow's leftovers cancelled), lets a test finish steps as executors and the timer loop
would, and checks at every activation that a from-scratch replay and a run kept between
activations (what the workflow cache does) reach the same decision.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from conveyor.coordinator.model import StepKind, StepStatus, WorkflowStatus, canonical_json
from conveyor.coordinator.replay import (
    INSTANT_KINDS,
    SETTLED,
    TIMER_STEP_NAME,
    JournalEntry,
    ReplayOutcome,
    WorkflowRun,
    replay,
)
from conveyor.workflow import WorkflowDefinition, WorkflowRegistry

STARTED_AT_US = 1_700_000_000_000_000


class SameDraw(random.Random):
    """Every draw is the same, so a ``ctx.random()`` taken by either run records the same value."""

    def random(self) -> float:
        return 0.25


def definition_of(function: Callable[..., Any]) -> WorkflowDefinition:
    registry = WorkflowRegistry()
    registry.register(function)
    found = registry.get(function.__name__)
    assert found is not None
    return found


class JournalModel:
    def __init__(self, function: Callable[..., Any], args: dict[str, Any] | None = None) -> None:
        self.definition = definition_of(function)
        self.args = args or {}
        self.entries: list[JournalEntry] = []
        self.activations = 0
        self.status = WorkflowStatus.RUNNING
        self.clock_us = STARTED_AT_US
        self.outcomes: list[ReplayOutcome] = []
        #: The run kept between activations, as the workflow cache keeps it.
        self.kept = WorkflowRun(self.definition, "wf", self.args, started_at_us=STARTED_AT_US, rng=SameDraw())
        self.kept_started = False

    # --- what executors and timers do ------------------------------------------------------

    def tick(self) -> int:
        self.clock_us += 1_000_000
        return self.clock_us

    def number(self, name: str) -> int:
        """The running step called ``name`` (the last one, if several)."""
        found = [e.number for e in self.entries if e.name == name and e.status is StepStatus.RUNNING]
        assert found, f"no running step {name!r} in {[(e.name, e.status.value) for e in self.entries]}"
        return found[-1]

    def complete(self, name: str, result: Any = None) -> None:
        self.finish(self.number(name), StepStatus.COMPLETED, canonical_json(result))

    def fail(self, name: str, error: str = "HTTP 400: bad request") -> None:
        self.finish(self.number(name), StepStatus.FAILED, None, error)

    def fire(self, seconds: float | None = None) -> None:
        """The oldest running asyncio timer (of ``seconds``, if given) fires."""
        timers = [
            e
            for e in self.entries
            if e.name == TIMER_STEP_NAME
            and e.status is StepStatus.RUNNING
            and (seconds is None or e.args_json == canonical_json({"seconds": seconds}))
        ]
        assert timers, "no running asyncio timer"
        self.finish(timers[0].number, StepStatus.COMPLETED, "null")

    def finish(
        self, number: int, status: StepStatus, result_json: str | None, error: str | None = None
    ) -> None:
        entry = self.entries[number]
        assert entry.status is StepStatus.RUNNING, entry
        self.entries[number] = dataclasses.replace(
            entry, status=status, result_json=result_json, error=error, completed_at=self.tick()
        )

    def running(self) -> list[JournalEntry]:
        return [e for e in self.entries if e.status is StepStatus.RUNNING]

    def names(self, status: StepStatus) -> list[str]:
        return [e.name for e in self.entries if e.status is status]

    # --- what the coordinator does -----------------------------------------------------------

    def replay(self) -> ReplayOutcome:
        """Replay from scratch, check the kept run decides the same, and apply the outcome."""
        assert self.status is WorkflowStatus.RUNNING
        journal = tuple(self.entries)
        outcome = replay(
            self.definition,
            "wf",
            self.args,
            journal,
            now_us=self.clock_us,
            rng=SameDraw(),
            activations=self.activations,
            started_at_us=STARTED_AT_US,
        )
        if self.kept_started:
            kept = self.kept.advance([e for e in journal if e.awaiting_delivery], self.clock_us)
        else:
            kept = self.kept.resume(journal, self.activations, self.clock_us)
            self.kept_started = True
        assert kept == outcome, f"the kept run decided {kept}\nbut a replay from scratch {outcome}"
        self.apply(outcome)
        return outcome

    def apply(self, outcome: ReplayOutcome) -> None:
        self.outcomes.append(outcome)
        for number, activation in outcome.delivered:
            assert self.entries[number].awaiting_delivery, self.entries[number]
            self.entries[number] = dataclasses.replace(self.entries[number], delivered_in=activation)
        for step in outcome.new_steps:
            assert step.number == len(self.entries)
            complete = step.result_json is not None
            self.entries.append(
                JournalEntry(
                    step.number,
                    step.kind,
                    step.name,
                    step.args_json,
                    StepStatus.COMPLETED if complete else StepStatus.RUNNING,
                    step.result_json,
                    delivered_in=SETTLED if step.kind in INSTANT_KINDS else None,
                    completed_at=self.clock_us if complete else None,
                )
            )
        finished = outcome.status is not WorkflowStatus.RUNNING
        cancelled = set(outcome.withdrawn) | ({e.number for e in self.running()} if finished else set())
        for number in cancelled:
            if self.entries[number].status is StepStatus.RUNNING:
                self.entries[number] = dataclasses.replace(
                    self.entries[number],
                    status=StepStatus.CANCELLED,
                    error="cancelled by the workflow code",
                    delivered_in=SETTLED,
                    completed_at=self.clock_us,
                )
        if outcome.activations is not None:
            self.activations = outcome.activations
        self.status = outcome.status
        if finished:
            self.kept.close()

    def close(self) -> None:
        self.kept.close()


def timers(outcome: ReplayOutcome) -> list[float]:
    """The asyncio timers an outcome set, in seconds."""
    import json

    return [
        json.loads(step.args_json)["seconds"]
        for step in outcome.new_steps
        if step.kind is StepKind.SLEEP and step.name == TIMER_STEP_NAME
    ]
