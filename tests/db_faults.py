"""Database faults a test can switch on and off in-process.

* :class:`TcpProxy`: a TCP relay in front of PostgreSQL that cuts or swallows its connections
  on demand (:mod:`bench.chaos.tcp_proxy`, shared with the chaos benchmarks).
* :class:`SqliteLock`: another connection holding the SQLite write lock, as a second
  process would.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url


class SqliteLock:
    """Holds the write lock of a SQLite database file between ``take()`` and ``release()``."""

    def __init__(self, url: str) -> None:
        database = make_url(url).database
        assert database
        self.path = Path(database)
        self._connection: sqlite3.Connection | None = None

    def take(self) -> None:
        self._connection = sqlite3.connect(
            self.path, isolation_level=None, timeout=60, check_same_thread=False
        )
        self._connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self._connection is not None:
            self._connection.execute("ROLLBACK")
            self._connection.close()
            self._connection = None
