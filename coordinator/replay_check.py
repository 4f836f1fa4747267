"""Replaying stored journals against new workflow code, writing nothing: the pre-deploy check.

A deploy that changes workflow code changes what replay asks for. Workflows in flight
whose journals the new code no longer matches would fail with a non-determinism error
at their next step. :func:`check` replays each stored journal against the code to be
deployed and counts, per workflow name, how many would, and at which step — so the
change can be guarded with ``ctx.patched()`` before it ships. ``conveyor replay-check``
runs it against a database; :class:`Replayer` runs it in tests.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.workflow import WorkflowRegistry

from .clock import now_us
from .model import WorkflowStatus
from .replay import JournalEntry, ReplayOutcome, replay
from .replay_runner import ReplayCall, ReplayRunner
from .store.histories import StoredHistory

#: Each replay runs user code; one that blocks longer than this is reported, not waited for.
REPLAY_TIMEOUT = 10.0
#: Replays handed to the runner at a time.
BATCH = 100


@dataclass
class NameReport:
    """What replaying the stored workflows of one name against the new code found."""

    name: str
    checked: int = 0
    #: Would fail at their next replay because code and journal disagree.
    nondeterministic: int = 0
    #: How many of those first disagree at each step number.
    steps: collections.Counter[int] = field(default_factory=collections.Counter)
    #: Stored as running, but the new code fails them for another reason (an exception, a bad
    #: argument, a replay past the time limit).
    newly_failing: int = 0
    #: (workflow id, message) of the first of each problem, to start the investigation from.
    examples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.nondeterministic or self.newly_failing)


@dataclass
class ReplayCheckReport:
    by_name: dict[str, NameReport] = field(default_factory=dict)
    #: Stored workflows whose name the new code does not register, by name.
    unregistered: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def ok(self) -> bool:
        return not self.unregistered and all(report.ok for report in self.by_name.values())

    @property
    def checked(self) -> int:
        return sum(report.checked for report in self.by_name.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "by_name": {
                name: {
                    "checked": report.checked,
                    "nondeterministic": report.nondeterministic,
                    "steps": {str(step): count for step, count in sorted(report.steps.items())},
                    "newly_failing": report.newly_failing,
                    "examples": [
                        {"workflow_id": wid, "message": message} for wid, message in report.examples
                    ],
                }
                for name, report in sorted(self.by_name.items())
            },
            "unregistered": dict(self.unregistered),
        }


class Replayer:
    """Replays journals against a registry's code, as the coordinator would; writes nothing."""

    def __init__(self, registry: WorkflowRegistry, *, replay_timeout: float = REPLAY_TIMEOUT) -> None:
        self._registry = registry
        self._replay_timeout = replay_timeout
        self._rng = random.Random()

    def replay(
        self,
        name: str,
        args: list[Any] | dict[str, Any],
        journal: Sequence[JournalEntry],
        workflow_id: str = "check",
        *,
        activations: int | None = None,
        started_at_us: int = 0,
    ) -> ReplayOutcome:
        """One journal against the current code, in this thread (for tests of a change).

        ``activations``: how many activations the journal records, as the workflow row stores them
        (None: a journal from before they were recorded, replayed in waves).
        """
        definition = self._registry.get(name)
        if definition is None:
            raise KeyError(f"no workflow named {name!r} is registered")
        return replay(
            definition,
            workflow_id,
            args,
            journal,
            now_us=now_us(),
            rng=self._rng,
            activations=activations,
            started_at_us=started_at_us,
            workflows=self._registry,
        )

    async def check(self, stored: Iterable[StoredHistory]) -> ReplayCheckReport:
        """Replay every history on a runner thread with a time limit; a report per workflow name."""
        report = ReplayCheckReport()
        runner = ReplayRunner(self._replay_timeout)
        try:
            for batch in _batches(stored, BATCH):
                known = [history for history in batch if self._registry.get(history.name) is not None]
                for history in batch:
                    if self._registry.get(history.name) is None:
                        report.unregistered[history.name] += 1
                outcomes = await runner.run([self._call(history) for history in known])
                for history, outcome in zip(known, outcomes, strict=True):
                    if outcome is not None:  # None only for a workflow-cache miss, which this runner has not
                        _record(report, history, outcome)
        finally:
            runner.stop()
        return report

    def _call(self, history: StoredHistory) -> ReplayCall:
        def run() -> ReplayOutcome:
            try:
                args = json.loads(history.args) if history.args else []
            except ValueError as error:
                return ReplayOutcome(WorkflowStatus.FAILED, error=f"stored arguments are not JSON: {error}")
            return self.replay(
                history.name,
                args,
                history.journal,
                history.workflow_id,
                activations=history.activations,
                started_at_us=history.created_at,
            )

        return ReplayCall(history.workflow_id, run)


def _record(report: ReplayCheckReport, history: StoredHistory, outcome: ReplayOutcome) -> None:
    name_report = report.by_name.setdefault(history.name, NameReport(history.name))
    name_report.checked += 1
    if outcome.nondeterministic_step is not None:
        name_report.nondeterministic += 1
        name_report.steps[outcome.nondeterministic_step] += 1
        if name_report.steps[outcome.nondeterministic_step] == 1:
            name_report.examples.append((history.workflow_id, outcome.error or ""))
    elif outcome.status is WorkflowStatus.FAILED and history.status is WorkflowStatus.RUNNING:
        name_report.newly_failing += 1
        if name_report.newly_failing == 1:
            name_report.examples.append((history.workflow_id, outcome.error or ""))


def _batches(items: Iterable[StoredHistory], size: int) -> Iterator[list[StoredHistory]]:
    batch: list[StoredHistory] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_database(
    url: str,
    registry: WorkflowRegistry,
    *,
    statuses: Sequence[WorkflowStatus] = (WorkflowStatus.RUNNING,),
    sample: int | None = None,
) -> ReplayCheckReport:
    """Replay the stored workflows of ``url`` (those in ``statuses``; ``sample`` at random) against
    ``registry``, reading only: safe against a database a coordinator is serving."""
    from .store import Database
    from .store.histories import histories, names_outside

    database = Database(url, reader_pool_size=1)
    try:
        with database.reader.connect() as connection:
            names = registry.names()
            stored = histories(connection, statuses=statuses, names=names, sample=sample)
            report = asyncio.run(Replayer(registry).check(stored))
            report.unregistered.update(names_outside(connection, statuses=statuses, names=names))
            return report
    finally:
        database.dispose()
