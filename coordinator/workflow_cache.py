"""The workflow cache (sticky execution): runs of workflow code kept between activations.

A workflow that waits on steps is a suspended coroutine. Kept in memory with its event
loop (a :class:`~conveyor.coordinator.replay.WorkflowRun`), the next activation only
delivers the outcomes that finished since and runs the code on from where it waits,
instead of replaying the journal from step 0: step 5,000 costs what step 50 does, and
the replay loop reads only the undelivered outcomes of a cached workflow, not its journal.

A from-scratch replay (a miss: a restart, an eviction) is the same code path, a run
started and caught up on the recorded activations before the new one
(:meth:`WorkflowRun.resume`), so a cached run and a replay reach the same decision.

An entry is valid only while the stored workflow is exactly as the run left it: its step
count and activation count (what the replay's write sets) equal the run's. Anything else
(the write refused or failed, an operator's change) makes the lookup a miss, and the run
is dropped. Bounded by entries (LRU) and by an estimate of their memory.

Used from the replay runner's thread only (user code runs on it), except
:meth:`expected`, a lock-protected read the replay loop makes when it decides what to
read, and :meth:`forget`, which only queues workflows for the runner thread to drop.

``CONVEYOR_WORKFLOW_CACHE`` (``on`` by default, ``off``, or ``random-evict``: every lookup
misses at random half the time) is a test mode: the suite runs its workflows each way.
"""

from __future__ import annotations

import collections
import os
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from .cache_stats import CacheStats
from .replay import WorkflowRun

#: Default bound on cached runs (``--workflow-cache-size``).
DEFAULT_CACHE_SIZE = 10_000
#: Default bound on the cached runs' estimated memory.
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
#: What a run costs beyond the payloads it holds: a loop, a context, its tasks and frames.
RUN_OVERHEAD_BYTES = 8_192
#: Per step taken: its future, its delivery closure, the frames awaiting it.
STEP_OVERHEAD_BYTES = 512
MODE_VARIABLE = "CONVEYOR_WORKFLOW_CACHE"


class CacheMode(StrEnum):
    ON = "on"
    OFF = "off"
    #: Test mode: each lookup misses (and drops the run) with probability one half.
    RANDOM_EVICT = "random-evict"


def mode_from_env() -> CacheMode:
    raw = os.environ.get(MODE_VARIABLE, "on").strip().lower() or "on"
    try:
        return CacheMode(raw)
    except ValueError:
        choices = ", ".join(mode.value for mode in CacheMode)
        raise ValueError(f"{MODE_VARIABLE}={raw!r} is not one of {choices}") from None


@dataclass
class _Entry:
    run: WorkflowRun
    step_count: int
    activations: int
    size: int


class WorkflowCache:
    def __init__(
        self,
        max_entries: int = DEFAULT_CACHE_SIZE,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        mode: CacheMode | None = None,
        rng: random.Random | None = None,
        stats: CacheStats | None = None,
    ) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("workflow cache bounds must not be negative")
        self.mode = mode if mode is not None else mode_from_env()
        self._max_entries = 0 if self.mode is CacheMode.OFF else max_entries
        self._max_bytes = max_bytes
        self._rng = rng or random.Random()
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._forgotten: list[str] = []
        self._bytes = 0
        self.stats = stats if stats is not None else CacheStats()

    def expected(self, workflow_id: str) -> tuple[int, int] | None:
        """The (step count, activation count) at which the cached run of ``workflow_id`` is valid."""
        with self._lock:
            entry = self._entries.get(workflow_id)
            return None if entry is None else (entry.step_count, entry.activations)

    def take(self, workflow_id: str, step_count: int, activations: int | None) -> WorkflowRun | None:
        """The run of ``workflow_id``, out of the cache, if it is valid for the stored counts."""
        self.drop_forgotten()
        with self._lock:
            entry = self._entries.pop(workflow_id, None)
            if entry is not None:
                self._bytes -= entry.size
        if entry is not None and (entry.step_count, entry.activations) == (step_count, activations):
            if self.mode is CacheMode.RANDOM_EVICT and self._rng.random() < 0.5:
                self._evict(entry)
            else:
                self.stats.hits += 1
                self._update_gauges()
                return entry.run
        elif entry is not None:
            self._evict(entry)
        self.stats.misses += 1
        self._update_gauges()
        return None

    def put(self, run: WorkflowRun, payload_bytes: int) -> None:
        """Keep ``run`` (waiting on steps) for its next activation; evict the least recently used
        beyond the bounds. ``payload_bytes``: the JSON it was handed and asked for so far (an estimate
        of what its code may hold)."""
        size = RUN_OVERHEAD_BYTES + STEP_OVERHEAD_BYTES * run.step_count + payload_bytes
        if self._max_entries == 0 or size > self._max_bytes:
            run.close()
            return
        evicted: list[_Entry] = []
        with self._lock:
            old = self._entries.pop(run.workflow_id, None)
            if old is not None:
                self._bytes -= old.size
                evicted.append(old)
            self._entries[run.workflow_id] = _Entry(run, run.step_count, run.activations, size)
            self._bytes += size
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                _, oldest = self._entries.popitem(last=False)
                self._bytes -= oldest.size
                evicted.append(oldest)
        for entry in evicted:
            self._evict(entry)
        self._update_gauges()

    def forgetting(self) -> bool:
        """Runs are queued to be dropped (:meth:`drop_forgotten` drops them)."""
        with self._lock:
            return bool(self._forgotten)

    def forget(self, workflow_ids: Iterable[str]) -> None:
        """Drop these workflows' runs (their outcome was not written): done on the runner thread,
        at its next lookup, since closing a run runs workflow code (its ``finally`` blocks)."""
        with self._lock:
            self._forgotten.extend(workflow_ids)

    def clear(self) -> None:
        """Drop every run without closing it: the runner abandoned its thread (a replay overran its
        deadline), which may still be inside one of them."""
        with self._lock:
            self.stats.evictions += len(self._entries)
            self._entries.clear()
            self._forgotten.clear()
            self._bytes = 0
        self._update_gauges()

    def drop_forgotten(self) -> None:
        """Drop the runs :meth:`forget` queued (on the runner thread: closing a run runs its code)."""
        with self._lock:
            forgotten, self._forgotten = self._forgotten, []
            dropped = [self._entries.pop(i) for i in forgotten if i in self._entries]
            for entry in dropped:
                self._bytes -= entry.size
        for entry in dropped:
            self._evict(entry)
        if dropped:
            self._update_gauges()

    def _evict(self, entry: _Entry) -> None:
        self.stats.evictions += 1
        entry.run.close()

    def _update_gauges(self) -> None:
        self.stats.entries = len(self._entries)
        self.stats.bytes = self._bytes
