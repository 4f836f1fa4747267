"""pytest fixtures for testing Conveyor workflows: opt in from your ``conftest.py`` with ::

    pytest_plugins = ["conveyor.testing.pytest_plugin"]

(or ``pytest -p conveyor.testing.pytest_plugin``). It is not registered through the
``pytest11`` entry point on purpose: that would load it into every pytest run of every
project that installs ``conveyor[testing]``, wanted or not.

``conveyor_env`` starts a :class:`~conveyor.testing.ConveyorTestEnv` and stops it after
the test (also when the test fails)::

    async def test_research(conveyor_env: ConveyorEnvFactory) -> None:
        env = await conveyor_env(workflows=[research], replies=fixed("moon"))
        assert (await env.run("research", {"topic": "tides"})).result == "moon"

The database is a new SQLite file per environment; override the ``conveyor_database_url``
fixture to use another (for example a PostgreSQL schema per test). The fixtures are
asynchronous and need pytest-asyncio (which the ``testing`` extra installs).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest
import pytest_asyncio

from .env import ConveyorTestEnv

__all__ = ["ConveyorEnvFactory", "conveyor_database_url", "conveyor_env"]


class ConveyorEnvFactory(Protocol):
    """``await conveyor_env(**options)``: the options of :meth:`ConveyorTestEnv.start`."""

    async def __call__(self, **options: Any) -> ConveyorTestEnv: ...


@pytest.fixture
def conveyor_database_url() -> str | None:
    """The database every ``conveyor_env`` of a test uses; None: a new SQLite file each."""
    return None


@pytest_asyncio.fixture
async def conveyor_env(conveyor_database_url: str | None) -> AsyncIterator[ConveyorEnvFactory]:
    """A factory of running test environments, all stopped when the test ends."""
    async with contextlib.AsyncExitStack() as environments:

        async def start(**options: Any) -> ConveyorTestEnv:
            options.setdefault("database_url", conveyor_database_url)
            return await environments.enter_async_context(ConveyorTestEnv.start(**options))

        yield start
