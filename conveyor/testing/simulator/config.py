"""The simulator's configuration: one immutable, validated value.

The config is frozen and replaced wholesale on every live update, so the
running server never sees a half-applied change and another thread can read
it without locks. Validation lives in ``__post_init__`` because configs arrive
from three places (Python callers, CLI flags and ``POST /_sim/config`` JSON)
and all of them must get the same readable errors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .latency import parse_latency

__all__ = ["FAULT_FIELDS", "LIMIT_FIELDS", "SimulatorConfig"]

#: Per-minute limits; 0 means unlimited.
LIMIT_FIELDS = ("rpm", "itpm", "otpm")
#: Fault shares, in the order a single random draw is mapped onto them.
FAULT_FIELDS = ("error_529", "error_500", "hang", "truncate")

_FIXED_REPLY_PREFIX = "fixed:"
_REDACTED = "<redacted>"


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator answers ``POST /v1/messages``.

    ``latency`` is a spec understood by :func:`conveyor.testing.simulator.latency.parse_latency`.
    ``rpm``/``itpm``/``otpm`` are requests, input tokens and output tokens per
    minute (0 = unlimited). The four fault fields are the shares of admitted
    requests that get a 529, a 500, no answer at all, or a truncated body; each
    is in [0, 1] and together they may not exceed 1, so they are exact shares
    of one random draw. ``reply`` is ``"echo"`` (answer with the last user
    message) or ``"fixed:<text>"``. With ``api_key`` set, requests must present
    it. ``seed`` makes latency and fault draws reproducible.
    """

    latency: str = "fixed:0"
    rpm: int = 0
    itpm: int = 0
    otpm: int = 0
    error_529: float = 0.0
    error_500: float = 0.0
    hang: float = 0.0
    truncate: float = 0.0
    reply: str = "echo"
    api_key: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.latency, str):
            raise ValueError(f"latency must be a string spec, got {self.latency!r}")
        parse_latency(self.latency)
        for name in LIMIT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0 means unlimited), got {value!r}")
        for name in FAULT_FIELDS:
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")
        total = sum(getattr(self, name) for name in FAULT_FIELDS)
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"fault shares ({', '.join(FAULT_FIELDS)}) add up to {total:g}; at most 1 is allowed"
            )
        if not isinstance(self.reply, str) or not (
            self.reply == "echo" or self.reply.startswith(_FIXED_REPLY_PREFIX)
        ):
            raise ValueError(f"reply must be 'echo' or 'fixed:<text>', got {self.reply!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    @property
    def fixed_reply(self) -> str | None:
        """The text of a ``fixed:<text>`` reply, or None in echo mode."""
        if self.reply.startswith(_FIXED_REPLY_PREFIX):
            return self.reply[len(_FIXED_REPLY_PREFIX) :]
        return None

    @property
    def fault_share(self) -> float:
        """Total share of admitted requests that get some fault."""
        return self.error_529 + self.error_500 + self.hang + self.truncate

    def with_changes(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """Return a validated copy with ``changes`` applied.

        Unknown field names are an error rather than being ignored, so a typo
        in a benchmark's config update fails loudly instead of silently
        measuring the wrong thing. ``None`` is accepted for the per-minute
        limits as another way to say "unlimited".
        """
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        normalised: dict[str, Any] = {
            name: 0 if name in LIMIT_FIELDS and value is None else value for name, value in changes.items()
        }
        return dataclasses.replace(self, **normalised)

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data, with the API key redacted."""
        data = dataclasses.asdict(self)
        if self.api_key is not None:
            data["api_key"] = _REDACTED
        return data

    def describe(self) -> str:
        """One human-readable line summarising the config, for startup logs."""
        limits = ", ".join(f"{name} {getattr(self, name) or 'unlimited'}" for name in LIMIT_FIELDS)
        faults = ", ".join(f"{name} {getattr(self, name):g}" for name in FAULT_FIELDS if getattr(self, name))
        return (
            f"latency {self.latency}, {limits}, faults {faults or 'none'}, reply {self.reply}, "
            f"auth {'on' if self.api_key else 'off'}, seed {self.seed}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)
