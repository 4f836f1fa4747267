"""The promises, checked on the database itself after a chaos run.

Read with a connection of its own, the way an operator with ``psql`` would, so
nothing the coordinator believes in memory can hide a problem:

1. **Every workflow finished**: none is still running once the run settled.
2. **None stranded**: the invariants ``Diagnose`` checks hold (no running workflow
   without a step in progress or a replay-queue row, no step in progress without a
   task, no task or replay row left for a finished workflow...).
3. **Each step's result recorded once**: every journal is numbered 0..n-1 with
   ``step_count`` = n (a result applied twice would advance its workflow twice),
   no finished workflow has a step still running, and every completed LLM/task
   step carries the fencing token and executor of the one result that completed it.
4. **Completed results are right**: every completed research workflow has exactly
   its four steps, and its summary is what the echo simulator makes of its topic
   (:func:`bench.workflows.expected_summary`), which depends on every step's text.
5. **Duplicate LLM calls are bounded**: the simulator's count of requests answered
   200 more than once is at most the number of tasks in flight when faults hit.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from conveyor.coordinator.model import EXECUTOR_STEP_KINDS, StepStatus, WorkflowStatus
from conveyor.coordinator.store.diagnosis import Violation, invariant_violations
from conveyor.coordinator.store.schema import steps, workflows

from ..workflows import expected_summary, research

RESEARCH_STEPS = ("extract", "analyze_a", "analyze_b", "summarize")
#: Examples listed per broken invariant.
EXAMPLES = 10


@dataclass(frozen=True)
class Fault:
    #: Seconds into the run.
    at: float
    kind: str
    target: str
    #: Tasks leased to executors within the fault's reach when it hit: each is an LLM
    #: call the fault may cause to be made again.
    in_flight: int


@dataclass
class InvariantReport:
    workflows: int
    by_status: dict[str, int]
    unfinished: list[str]
    violations: list[Violation]
    journal_problems: list[str]
    wrong_results: list[str]
    llm_requests: int
    duplicate_llm_calls: int
    faults: list[Fault] = field(default_factory=list)

    @property
    def duplicate_bound(self) -> int:
        return sum(fault.in_flight for fault in self.faults)

    def problems(self) -> list[str]:
        """Each broken promise, as a sentence with examples; empty when all hold."""
        found = []
        if self.unfinished:
            running = self.by_status.get("running", 0)
            found.append(f"workflows still running: {running}, e.g. {self.unfinished}")
        found += [f"{v.kind}: {v.description} ({v.count}, e.g. {v.workflow_ids})" for v in self.violations]
        if self.journal_problems:
            found.append(f"journals out of shape (a result recorded twice?): {self.journal_problems}")
        if self.wrong_results:
            found.append(f"completed workflows with a wrong result: {self.wrong_results}")
        if self.duplicate_llm_calls > self.duplicate_bound:
            found.append(
                f"{self.duplicate_llm_calls} LLM calls were made twice, more than the {self.duplicate_bound} "
                "tasks in flight when the faults hit"
            )
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()

    def render(self) -> str:
        """The report as text, for a terminal or a log."""
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(self.by_status.items()))
        lines = [
            f"workflows: {self.workflows} ({statuses})",
            f"LLM requests: {self.llm_requests}; made twice: {self.duplicate_llm_calls} "
            f"(bound: {self.duplicate_bound} tasks in flight at {len(self.faults)} faults)",
            "faults:",
            *(
                f"  {fault.at:7.1f}s  {fault.kind:<28} {fault.target:<32} in flight: {fault.in_flight}"
                for fault in self.faults
            ),
        ]
        checks = [
            ("every workflow finished", not self.unfinished),
            ("none stranded (Diagnose invariants)", not self.violations),
            ("each step's result recorded once", not self.journal_problems),
            ("completed results correct", not self.wrong_results),
            ("duplicate LLM calls within bound", self.duplicate_llm_calls <= self.duplicate_bound),
        ]
        lines += [f"{'PASS' if held else 'FAIL'}  {name}" for name, held in checks]
        lines += [f"  - {problem}" for problem in self.problems()]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["duplicate_bound"] = self.duplicate_bound
        data["ok"] = self.ok
        return data


def check(
    database_url: str,
    *,
    registered_workflows: Collection[str],
    simulator_stats: dict[str, Any],
    faults: Sequence[Fault] = (),
) -> InvariantReport:
    """Check every promise against the database at ``database_url``."""
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            workflow_rows = connection.execute(
                sa.select(
                    workflows.c.id,
                    workflows.c.name,
                    workflows.c.status,
                    workflows.c.args,
                    workflows.c.result,
                    workflows.c.step_count,
                ).order_by(workflows.c.created_at)
            ).all()
            journals: dict[str, list[Any]] = defaultdict(list)
            for step in connection.execute(
                sa.select(
                    steps.c.workflow_id,
                    steps.c.number,
                    steps.c.kind,
                    steps.c.name,
                    steps.c.status,
                    steps.c.result_token,
                    steps.c.executor_id,
                ).order_by(steps.c.workflow_id, steps.c.number)
            ):
                journals[step.workflow_id].append(step)
            violations = invariant_violations(connection, list(registered_workflows), EXAMPLES)
    finally:
        engine.dispose()
    by_status: dict[str, int] = defaultdict(int)
    for row in workflow_rows:
        by_status[row.status] += 1
    journal_problems: list[str] = []
    wrong_results: list[str] = []
    for row in workflow_rows:
        journal = journals.get(row.id, [])
        problem = _journal_problem(row, journal)
        if problem is not None:
            journal_problems.append(f"{row.id}: {problem}")
        elif row.name == research.__name__ and row.status == WorkflowStatus.COMPLETED:
            problem = _research_problem(row, journal)
            if problem is not None:
                wrong_results.append(f"{row.id}: {problem}")
    return InvariantReport(
        workflows=len(workflow_rows),
        by_status=dict(by_status),
        unfinished=[row.id for row in workflow_rows if row.status == WorkflowStatus.RUNNING][:EXAMPLES],
        violations=violations,
        journal_problems=journal_problems[:EXAMPLES],
        wrong_results=wrong_results[:EXAMPLES],
        llm_requests=int(simulator_stats.get("requests", 0)),
        duplicate_llm_calls=int(simulator_stats.get("duplicate_successes", 0)),
        faults=list(faults),
    )


def _journal_problem(workflow: Any, journal: list[Any]) -> str | None:
    numbers = [step.number for step in journal]
    if numbers != list(range(len(journal))) or workflow.step_count != len(journal):
        return f"journal positions {numbers}, but step_count {workflow.step_count}"
    for step in journal:
        if workflow.status != WorkflowStatus.RUNNING and step.status == StepStatus.RUNNING:
            return f"finished as {workflow.status} with step {step.number} still running"
        if (
            step.kind in EXECUTOR_STEP_KINDS
            and step.status == StepStatus.COMPLETED
            and (step.result_token is None or step.executor_id is None)
        ):
            return f"step {step.number} completed without the token and executor of its accepted result"
    return None


def _research_problem(workflow: Any, journal: list[Any]) -> str | None:
    shape = [(step.name, step.kind, step.status) for step in journal]
    if shape != [(name, "llm", StepStatus.COMPLETED) for name in RESEARCH_STEPS]:
        return f"completed with steps {shape}"
    topic = json.loads(workflow.args)["topic"]
    summary = json.loads(workflow.result or "null")
    expected = expected_summary(topic)
    if not isinstance(summary, dict) or summary.get("summary") != expected:
        return f"summary {summary!r} is not {expected!r}"
    return None
