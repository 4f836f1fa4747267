"""The testing kit's tests run on both databases: its fixtures take the suite's ``database_url``."""

from __future__ import annotations

import pytest


@pytest.fixture
def conveyor_database_url(database_url: str) -> str:
    """Overrides the plugin's fixture (a new SQLite file) with the suite's: SQLite and PostgreSQL."""
    return database_url
