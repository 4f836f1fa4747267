"""Counters that tests and benchmarks read back from a running simulator.

Counters cover requests to the API (``/v1/messages`` and unknown paths), not
the ``/_sim/*`` control endpoints, so polling stats does not disturb them.
``by_status`` counts complete answers only; hung, truncated and
client-abandoned requests are counted separately because the client never
received a status for them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

__all__ = ["Stats"]


class Stats:
    """Mutable counters, only ever touched from the simulator's event loop."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.open_connections = 0
        self._answered_bodies: set[bytes] = set()
        self.reset()

    def reset(self) -> None:
        """Zero the counters; gauges keep their value and peaks restart from it."""
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        self.successes = 0
        self.hangs = 0
        self.truncations = 0
        self.client_disconnects = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.duplicate_successes = 0
        self.peak_in_flight = self.in_flight
        self.peak_connections = self.open_connections
        self._answered_bodies.clear()

    def request_started(self) -> None:
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

    def request_finished(self) -> None:
        self.in_flight -= 1

    def connection_opened(self) -> None:
        self.open_connections += 1
        if self.open_connections > self.peak_connections:
            self.peak_connections = self.open_connections

    def connection_closed(self) -> None:
        self.open_connections -= 1

    def record_success(self, body: dict[str, Any], input_tokens: int, output_tokens: int) -> None:
        """Count a 200 answer, noticing if the same request was answered before.

        Requests are compared by a digest of their canonical JSON so that key
        order does not matter and memory stays small over millions of calls.
        """
        self.successes += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        canonical = json.dumps(body, sort_keys=True).encode()
        digest = hashlib.blake2b(canonical, digest_size=16).digest()
        if digest in self._answered_bodies:
            self.duplicate_successes += 1
        else:
            self._answered_bodies.add(digest)

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready data (status codes become string keys)."""
        return {
            "requests": self.requests,
            "by_status": {str(status): count for status, count in sorted(self.by_status.items())},
            "successes": self.successes,
            "rate_limited": self.by_status[429],
            "overloaded": self.by_status[529],
            "server_errors": self.by_status[500],
            "hangs": self.hangs,
            "truncations": self.truncations,
            "client_disconnects": self.client_disconnects,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "open_connections": self.open_connections,
            "peak_connections": self.peak_connections,
            "duplicate_successes": self.duplicate_successes,
        }
