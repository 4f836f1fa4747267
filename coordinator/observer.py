"""The events the engine reports as they happen, for whoever watches (the Prometheus metrics).

The engine calls these and knows nothing of what is behind them:
:class:`~conveyor.coordinator.metrics.CoordinatorMetrics` turns them into counters and
histograms; :class:`NoObserver` ignores them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .store import ClaimedTask, RecordOutcome, ReplayBatchOutcome


class EngineObserver(Protocol):
    def claimed(self, tasks: Sequence[ClaimedTask], claimed_at: int) -> None:
        """A batch of ``tasks`` was claimed for one executor at ``claimed_at`` (µs)."""

    def recorded(self, outcome: RecordOutcome) -> None:
        """A batch of results was recorded (accepted, duplicate or stale)."""

    def replayed(self, outcome: ReplayBatchOutcome) -> None:
        """A batch of workflows was replayed."""


class NoObserver:
    """Watches nothing."""

    def claimed(self, tasks: Sequence[ClaimedTask], claimed_at: int) -> None:
        pass

    def recorded(self, outcome: RecordOutcome) -> None:
        pass

    def replayed(self, outcome: ReplayBatchOutcome) -> None:
        pass
