"""Log setup shared by the coordinator, executor and simulator processes."""

from __future__ import annotations

import logging
import os


def configure(level: str | None = None) -> None:
    """Log to stderr at ``level`` (default: $CONVEYOR_LOG_LEVEL or INFO)."""
    logging.basicConfig(
        level=(level or os.environ.get("CONVEYOR_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # grpc and the HTTP stacks are chatty at INFO.
    for noisy in ("httpx", "httpx2", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
