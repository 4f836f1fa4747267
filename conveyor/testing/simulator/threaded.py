"""Running a simulator in a background thread for synchronous callers.

Synchronous tests and benchmark harnesses cannot ``await`` a server, and
should not share their own event loop with it either (a busy client loop would
then add latency to the server). A dedicated thread with its own loop keeps
the two apart.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .config import SimulatorConfig
from .server import Simulator

__all__ = ["run_in_thread"]


@contextmanager
def run_in_thread(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[Simulator]:
    """Start a :class:`Simulator` on a fresh loop in a daemon thread and yield it.

    The simulator is listening when the ``with`` body starts and is stopped,
    its loop closed and its thread joined when the body exits.
    """
    simulator = Simulator(config, host, port)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="conveyor-simulator", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(simulator.start(), loop).result()
        try:
            yield simulator
        finally:
            asyncio.run_coroutine_threadsafe(simulator.stop(), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
