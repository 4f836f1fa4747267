"""Anthropic's error envelope, shared by the HTTP layer and the API handlers."""

from __future__ import annotations

import json

__all__ = ["error_json"]


def error_json(error_type: str, message: str) -> bytes:
    """``{"type":"error","error":{"type":...,"message":...}}`` as the SDK expects it."""
    return json.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}}, separators=(",", ":")
    ).encode()
