"""The workflow cache's counters: a leaf, shared by the cache that updates them and the reports
and metrics that read them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CacheStats:
    """The workflow cache's lookups since start-up, and what it holds now."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
