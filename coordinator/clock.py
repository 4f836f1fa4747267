"""Time as the coordinator records it: integer microseconds since the Unix epoch (UTC).

Integers keep timestamps exact and identical on SQLite and PostgreSQL, and make the
FIFO key ``(shard, workflow_created_at, id)`` cheap to index and compare.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


def now_us() -> int:
    return time.time_ns() // 1000


def to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def seconds_to_us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class CreationClock:
    """Hands out strictly increasing timestamps for workflow creation.

    ``created_at`` is the FIFO key, so two workflows started in the same microsecond
    (a batch start does thousands per millisecond) must still sort in start order.
    The coordinator is the only writer, so an in-process counter seeded from the
    database suffices.
    """

    def __init__(self, last_issued_us: int = 0) -> None:
        self._last = last_issued_us
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(now_us(), self._last + 1)
            return self._last
