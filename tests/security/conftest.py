"""Fixtures of the security tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from security.tokens import Tokens


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    """A fresh tokens file with one token per role (see :class:`security.tokens.Tokens`)."""
    return Tokens.write(tmp_path / "tokens")
