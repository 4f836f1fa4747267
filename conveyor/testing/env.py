"""A whole Conveyor deployment inside one test: coordinator, executors and a simulated LLM.

Everything runs in the test's event loop on free local ports (real gRPC, a real database,
a real HTTP server standing in for the Anthropic API), so a test exercises the same code
paths as production without a network or an API key::

    async with ConveyorTestEnv.start(workflows=[research], replies=by_prompt({"tides": "moon"})) as env:
        finished = await env.run("research", {"topic": "tides"})
        assert finished.result == "moon"

The database is a SQLite file in a temporary directory unless ``database_url`` names
another (PostgreSQL included; the schema is created on start). Leaving the ``async with``
block, normally or by an exception, stops the executors, the coordinator and the
simulator and removes the temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from conveyor.client.client import AsyncClient
from conveyor.client.models import Workflow
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import CoordinatorServer
from conveyor.errors import ConfigurationError, DeadlineExceeded
from conveyor.executor.llm import LlmCaller
from conveyor.executor.worker import Executor, ExecutorConfig
from conveyor.tasks import HANDLER_MARK, HandlerRegistry
from conveyor.workflow import WorkflowRegistry

from .simulator import MessagesRequest, Responder, Simulator, SimulatorConfig

__all__ = ["TEST_COORDINATOR_DEFAULTS", "ConveyorTestEnv"]

log = logging.getLogger(__name__)

#: Coordinator settings for tests: heartbeats and leases short enough that a lost executor
#: is noticed within seconds rather than the production default's tens of seconds.
TEST_COORDINATOR_DEFAULTS: Mapping[str, Any] = {"heartbeat_interval": 0.2, "lease_ttl": 2.0}
#: Executor settings for tests (overridable per executor).
TEST_EXECUTOR_DEFAULTS: Mapping[str, Any] = {"concurrency": 10}
#: How long closing waits for an executor to stop before cancelling it.
EXECUTOR_STOP_SECONDS = 10.0


class ConveyorTestEnv:
    """A coordinator on a local port, plus executors and an LLM simulator, in-process.

    :meth:`start` is the usual way in. The methods below it start and stop the parts one
    at a time, for tests that restart a coordinator or add executors midway.
    """

    def __init__(
        self,
        database_url: str,
        registry: WorkflowRegistry,
        *,
        replies: Responder | None = None,
        **coordinator_config: Any,
    ) -> None:
        self.database_url = database_url
        self.registry = registry
        self.config_overrides = coordinator_config
        self.server: CoordinatorServer | None = None
        #: The port of the first start: a restart listens there again (0: none yet).
        self._port = 0
        self.simulator: Simulator | None = None
        self.executors: list[tuple[Executor, asyncio.Task[int]]] = []
        self.client: AsyncClient | None = None
        #: Every Messages API request the simulator answered, in arrival order (to assert on prompts).
        self.llm_requests: list[MessagesRequest] = []
        #: Picks the LLM's replies (None: the simulator's configured ``reply``); settable midway.
        self.replies = replies

    # ------------------------------------------------------------------ one call

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        *,
        workflows: Iterable[Callable[..., Any]] | WorkflowRegistry = (),
        handlers: Iterable[Callable[..., Any]] | HandlerRegistry = (),
        replies: Responder | None = None,
        llm: SimulatorConfig | None = None,
        executors: int = 1,
        database_url: str | None = None,
        coordinator_config: Mapping[str, Any] | None = None,
        executor_config: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[ConveyorTestEnv]:
        """Start a coordinator, a simulator and ``executors`` executors; stop them all on exit.

        ``workflows`` are ``@workflow`` functions (or a registry), ``handlers`` are
        ``@task_handler`` functions (or a registry) the executors serve. ``replies`` picks
        what the LLM answers (see :mod:`conveyor.testing.replies`; default: it echoes the
        prompt); ``llm`` configures the simulator's latency, rate limits and faults.
        """
        with contextlib.ExitStack() as scratch:
            if database_url is None:
                directory = scratch.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-test-"))
                database_url = f"sqlite:///{Path(directory) / 'conveyor.db'}"
            env = cls(
                database_url, _workflow_registry(workflows), replies=replies, **dict(coordinator_config or {})
            )
            try:
                await env.start_coordinator()
                await env.start_simulator(llm)
                for _ in range(executors):
                    env.start_executor(handlers=_handler_registry(handlers), **dict(executor_config or {}))
                yield env
            finally:
                await env.close()

    async def run(self, name: str, args: Any = None, *, within: float = 30.0) -> Workflow:
        """Start workflow ``name`` with ``args``, wait until it finishes, and return it with its steps.

        A workflow that fails is returned too (``status`` FAILED, ``error`` says why): assert
        on it. One still running after ``within`` seconds raises
        :class:`~conveyor.errors.DeadlineExceeded`, naming it.
        """
        client = self._client()
        started = await client.start_workflow(name, args)
        try:
            await client.wait(started.workflow_id, timeout=within, poll_interval=0.05)
        except DeadlineExceeded as error:
            raise DeadlineExceeded(
                f"workflow {name} ({started.workflow_id}) was still running after {within}s: "
                f"{(await client.explain_workflow(started.workflow_id)).summary}"
            ) from error
        return await client.get_workflow(started.workflow_id, include_steps=True)

    # ------------------------------------------------------------------- parts

    @property
    def coordinator(self) -> Any:
        """The running coordinator's engine (for tests that look inside it)."""
        if self.server is None:
            raise ConfigurationError("the coordinator is not running: start_coordinator() first")
        return self.server.coordinator

    async def start_coordinator(self, port: int | None = None) -> CoordinatorServer:
        """Start the coordinator; a restart listens on the port of the first start (unless
        ``port`` says otherwise), so the client and executors reconnect to it."""
        if port is None:
            port = self._port
        config = CoordinatorConfig(
            database_url=self.database_url,
            listen=f"127.0.0.1:{port}",
            **{**TEST_COORDINATOR_DEFAULTS, **self.config_overrides},
        )
        self.server = CoordinatorServer(config, self.registry)
        self._port = await self.server.start()
        if self.client is None:
            self.client = AsyncClient(self.server.address, timeout=20)
        return self.server

    async def stop_coordinator(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0.5)
            self.server = None

    async def start_simulator(self, config: SimulatorConfig | None = None) -> Simulator:
        """Start the simulated Anthropic API that executors started later call."""
        self.simulator = Simulator(config or SimulatorConfig(), responder=self._answer)
        await self.simulator.start()
        return self.simulator

    def _answer(self, request: MessagesRequest) -> str | None:
        self.llm_requests.append(request)
        return self.replies(request) if self.replies is not None else None

    def start_executor(
        self, *, handlers: HandlerRegistry | None = None, llm: bool = True, **config: Any
    ) -> Executor:
        """Start an executor (serving LLM steps against the simulator unless ``llm=False``)."""
        if self.server is None:
            raise ConfigurationError("the coordinator is not running: start_coordinator() first")
        caller = None
        if llm:
            if self.simulator is None:
                raise ConfigurationError(
                    "an executor serving LLM steps needs the simulator: start_simulator() first"
                )
            caller = LlmCaller(base_url=self.simulator.base_url, api_key="test", timeout=10)
        executor = Executor(
            ExecutorConfig(
                coordinator=self.server.address, serve_llm=llm, **{**TEST_EXECUTOR_DEFAULTS, **config}
            ),
            handlers or HandlerRegistry(),
            caller,
        )
        self.executors.append((executor, asyncio.create_task(executor.run(), name="conveyor test executor")))
        return executor

    async def close(self) -> None:
        """Stop everything started; safe to call twice, and after a part failed to start."""
        executors, self.executors = self.executors, []
        for executor, _task in executors:
            executor.abandon()
        for _executor, task in executors:
            try:
                async with asyncio.timeout(EXECUTOR_STOP_SECONDS):
                    await task
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:
                log.exception("an executor of the test environment failed")
        if self.client is not None:
            await self.client.close()
            self.client = None
        await self.stop_coordinator()
        if self.simulator is not None:
            await self.simulator.stop()
            self.simulator = None

    async def __aenter__(self) -> ConveyorTestEnv:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _client(self) -> AsyncClient:
        if self.client is None:
            raise ConfigurationError("the coordinator is not running: start_coordinator() first")
        return self.client


def _workflow_registry(workflows: Iterable[Callable[..., Any]] | WorkflowRegistry) -> WorkflowRegistry:
    if isinstance(workflows, WorkflowRegistry):
        return workflows
    registry = WorkflowRegistry()
    for function in workflows:
        registry.register(function)
    return registry


def _handler_registry(handlers: Iterable[Callable[..., Any]] | HandlerRegistry) -> HandlerRegistry:
    if isinstance(handlers, HandlerRegistry):
        return handlers
    registry = HandlerRegistry()
    for function in handlers:
        kind = getattr(function, HANDLER_MARK, None)
        if kind is None:
            raise ConfigurationError(
                f"{function!r} is not marked with @task_handler(kind): mark it, or pass a HandlerRegistry"
            )
        registry.register(kind, function)
    return registry
