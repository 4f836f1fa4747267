"""Fixtures: a real simulator on a free local port and real SDK clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import pytest

from conveyor.testing.simulator import Simulator, SimulatorConfig


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(seed=1)) as sim:
        yield sim


@pytest.fixture(params=["httpx", "aiohttp"])
async def client(
    request: pytest.FixtureRequest, simulator: Simulator
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """An SDK client on each of the SDK's two transports, with retries off so every call is one request."""
    http_client = anthropic.DefaultAioHttpClient() if request.param == "aiohttp" else None
    async with anthropic.AsyncAnthropic(
        base_url=simulator.base_url, api_key="test", max_retries=0, http_client=http_client
    ) as sdk:
        yield sdk
