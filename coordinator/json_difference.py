"""Where two JSON values first differ, said in a few words: for refusals that quote a mismatch."""

from __future__ import annotations

import json
from typing import Any

#: Longer values are cut in a message: a refusal must not quote a whole document.
SHOWN_CHARACTERS = 80


def first_difference(stored: Any, given: Any, path: str = "$") -> str | None:
    """``"at $.a[2]: stored 1, given 2"`` for the first place (in key order) where the values
    differ; None when they are equal. Keys present on one side only count as differences."""
    if isinstance(stored, dict) and isinstance(given, dict):
        for key in sorted(stored.keys() | given.keys()):
            where = f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"
            if key not in given:
                return f"at {where}: stored {_shown(stored[key])}, missing from this request"
            if key not in stored:
                return f"at {where}: not stored, this request has {_shown(given[key])}"
            found = first_difference(stored[key], given[key], where)
            if found is not None:
                return found
        return None
    if isinstance(stored, list) and isinstance(given, list):
        for index, (left, right) in enumerate(zip(stored, given, strict=False)):
            found = first_difference(left, right, f"{path}[{index}]")
            if found is not None:
                return found
        if len(stored) != len(given):
            return f"at {path}: stored {len(stored)} items, this request has {len(given)}"
        return None
    if type(stored) is type(given) and stored == given:
        return None
    return f"at {path}: stored {_shown(stored)}, this request has {_shown(given)}"


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= SHOWN_CHARACTERS else f"{text[: SHOWN_CHARACTERS - 1]}…"
