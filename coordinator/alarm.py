"""A one-shot wake-up at the earliest of the times asked for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .clock import now_us


class Alarm:
    """Calls ``callback`` (on the event loop) at the earliest wall-clock time requested.

    Requests later than the pending one are dropped; the callback is expected to
    look up the next due time itself and ask again.
    """

    def __init__(self, callback: Callable[[], object]) -> None:
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at: int | None = None

    def request(self, at_us: int | None) -> None:
        if at_us is None or (self._at is not None and self._at <= at_us):
            return
        self.cancel()
        self._at = at_us
        delay = max(0.0, (at_us - now_us()) / 1_000_000)
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._at = None

    def _fire(self) -> None:
        self._handle = None
        self._at = None
        self._callback()
