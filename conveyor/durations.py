"""Durations as people write them: ``90s``, ``90m``, ``12h``, ``7d``, ``2w`` (or plain seconds).

Shared by the options that take a span of time (``--retention 7d``) and the client commands
that take a time as "this long ago" (``conveyor purge --finished-before 7d``).
"""

from __future__ import annotations

import math
import re

from .errors import InvalidArgument

#: Seconds per unit suffix.
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)

EXAMPLES = "90m, 12h, 7d (units s, m, h, d, w; a bare number is seconds)"


def parse_duration(text: str) -> float:
    """``text`` in seconds; :class:`~conveyor.errors.InvalidArgument` if it is no duration."""
    match = _DURATION.match(text)
    if match is None:
        raise InvalidArgument(f"{text!r} is not a duration; write it like {EXAMPLES}")
    seconds = float(match.group(1)) * UNITS[(match.group(2) or "s").lower()]
    if not math.isfinite(seconds):
        raise InvalidArgument(f"{text!r} is too long a duration")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` in the largest whole unit (``7d``, ``90m``)."""
    for unit in ("w", "d", "h", "m"):
        size = UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
