"""Test helpers: a real Conveyor stack in-process, and polling without fixed sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bench.simulator import Simulator, SimulatorConfig
from clients.client import AsyncClient
from conveyor.tasks import HandlerRegistry
from conveyor.workflow import WorkflowRegistry
from coordinator.config import CoordinatorConfig
from coordinator.server import CoordinatorServer
from executor.llm import LlmCaller
from executor.worker import Executor, ExecutorConfig


async def eventually(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)


class Stack:
    """A coordinator on a local port, plus executors and a simulator on demand, all in-process."""

    def __init__(self, database_url: str, registry: WorkflowRegistry, **config: Any) -> None:
        self.database_url = database_url
        self.registry = registry
        self.config_overrides = config
        self.server: CoordinatorServer | None = None
        self.simulator: Simulator | None = None
        self.executors: list[tuple[Executor, asyncio.Task[int]]] = []
        self.client: AsyncClient | None = None

    @property
    def coordinator(self) -> Any:
        assert self.server is not None
        return self.server.coordinator

    async def start_coordinator(self, port: int = 0) -> CoordinatorServer:
        config = CoordinatorConfig(
            database_url=self.database_url,
            listen=f"127.0.0.1:{port}",
            **{"heartbeat_interval": 0.2, "lease_ttl": 2.0, **self.config_overrides},
        )
        self.server = CoordinatorServer(config, self.registry)
        await self.server.start()
        if self.client is None:
            self.client = AsyncClient(self.server.address, timeout=20)
        return self.server

    async def stop_coordinator(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0.5)
            self.server = None

    async def start_simulator(self, config: SimulatorConfig | None = None) -> Simulator:
        self.simulator = Simulator(config or SimulatorConfig())
        await self.simulator.start()
        return self.simulator

    def start_executor(
        self, *, handlers: HandlerRegistry | None = None, llm: bool = True, **config: Any
    ) -> Executor:
        assert self.server is not None
        caller = None
        if llm:
            assert self.simulator is not None, "start_simulator() first"
            caller = LlmCaller(base_url=self.simulator.base_url, api_key="test", timeout=10)
        executor = Executor(
            ExecutorConfig(coordinator=self.server.address, serve_llm=llm, **{"concurrency": 10, **config}),
            handlers or HandlerRegistry(),
            caller,
        )
        self.executors.append((executor, asyncio.create_task(executor.run())))
        return executor

    async def close(self) -> None:
        for executor, task in self.executors:
            executor.abandon()
        for _executor, task in self.executors:
            try:
                await asyncio.wait_for(task, 10)
            except (TimeoutError, Exception):
                task.cancel()
        if self.client is not None:
            await self.client.close()
        await self.stop_coordinator()
        if self.simulator is not None:
            await self.simulator.stop()



def registry_of(*functions: Callable[..., Any]) -> WorkflowRegistry:
    registry = WorkflowRegistry()
    for function in functions:
        registry.register(function)
    return registry
