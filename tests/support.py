"""Test helpers: a real Conveyor stack in-process, and polling without fixed sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from conveyor.testing.env import ConveyorTestEnv
from conveyor.transport import ChannelSecurity, open_channel
from conveyor.v1 import executor_service_pb2 as executor_pb
from conveyor.v1 import executor_service_pb2_grpc
from conveyor.workflow import WorkflowRegistry


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


class Stack(ConveyorTestEnv):
    """The suite's in-process stack: the testing kit's environment, started part by part.

    ``Stack(database_url, registry, **coordinator_config)``; the conftest's ``make_stack``
    starts the coordinator, tests start simulators and executors as they need them.
    """


def registry_of(*functions: Callable[..., Any]) -> WorkflowRegistry:
    registry = WorkflowRegistry()
    for function in functions:
        registry.register(function)
    return registry


# --------------------------------------------------------------------------- manual executor


def llm_message_json(text: str) -> str:
    """A minimal Messages API response body whose reply is ``text``, as an executor reports it."""
    return json.dumps(
        {
            "id": "msg_manual",
            "type": "message",
            "role": "assistant",
            "model": "manual",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
    )


class ManualExecutor:
    """A raw ExecutorService client that a test drives one message at a time.

    The real executor decides for itself when to take work and what to report; this one
    does nothing on its own except (optionally) heartbeat. The test sends Hello, credits,
    heartbeats and the draining notice when it chooses, takes the tasks it received in
    arrival order, and reports whatever results it likes with whatever fencing tokens, so
    it can observe claim order and batch sizes and play a misbehaving or silent executor.
    Every message the coordinator sends is recorded.

    Use as ``async with ManualExecutor(address, "m1") as m: await m.connect(...)``.
    A reconnect is a new ``ManualExecutor`` with the same ``executor_id``.
    """

    def __init__(
        self,
        address: str,
        executor_id: str,
        *,
        task_kinds: Sequence[str] = ("llm",),
        capacity: int = 1,
        epoch: int = 0,
        heartbeat_interval: float = 0.2,
        security: ChannelSecurity | None = None,
    ) -> None:
        self.address = address
        self.executor_id = executor_id
        self.task_kinds = list(task_kinds)
        self.capacity = capacity
        self.epoch = epoch
        self.heartbeat_interval = heartbeat_interval
        self.channel = open_channel(address, security or ChannelSecurity())
        self.stub = executor_service_pb2_grpc.ExecutorServiceStub(self.channel)
        self.welcome: executor_pb.Welcome | None = None
        #: Every message the coordinator sent on the stream, in arrival order.
        self.messages: list[executor_pb.ClaimTasksResponse] = []
        #: Each TaskBatch received, as a list of tasks.
        self.batches: list[list[executor_pb.Task]] = []
        #: Every ShardAssignment received; the last one is the current shard set.
        self.assignments: list[list[int]] = []
        self.drains: list[executor_pb.Drain] = []
        #: Set when the coordinator ends the stream (lease expired, replaced, shut down).
        self.stream_ended = asyncio.Event()
        self.stream_error: grpc.aio.AioRpcError | None = None
        self._unread: asyncio.Queue[executor_pb.Task] = asyncio.Queue()
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._heartbeater: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()

    async def __aenter__(self) -> ManualExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ stream

    async def connect(
        self,
        *,
        free_slots: int = 0,
        held_task_ids: Sequence[int] = (),
        heartbeats: bool = True,
        within: float = 10.0,
    ) -> executor_pb.Welcome:
        """Open the ClaimTasks stream with a Hello and wait for the Welcome.

        ``free_slots`` is the initial credit; with the default 0 no task arrives before
        :meth:`credit`. With ``heartbeats`` a background task heartbeats until
        :meth:`go_silent`.
        """
        self._call = self.stub.ClaimTasks()
        await self._call.write(
            executor_pb.ClaimTasksRequest(
                hello=executor_pb.Hello(
                    executor_id=self.executor_id,
                    epoch=self.epoch,
                    task_kinds=self.task_kinds,
                    capacity=self.capacity,
                    held_task_ids=list(held_task_ids),
                    version="manual",
                    free_slots=free_slots,
                )
            )
        )
        self._reader = asyncio.create_task(self._read(self._call), name=f"{self.executor_id} reader")
        await eventually(lambda: self.welcome is not None or self.stream_ended.is_set(), timeout=within)
        if self.welcome is None:
            raise AssertionError(f"{self.executor_id}: stream ended before a Welcome ({self.stream_error!r})")
        if heartbeats:
            self._heartbeater = asyncio.create_task(
                self._heartbeat_forever(), name=f"{self.executor_id} heartbeats"
            )
        return self.welcome

    async def _read(self, call: Any) -> None:
        try:
            async for message in call:
                self.messages.append(message)
                kind = message.WhichOneof("message")
                if kind == "welcome":
                    self.welcome = message.welcome
                elif kind == "tasks":
                    batch = list(message.tasks.tasks)
                    self.batches.append(batch)
                    for task in batch:
                        self._unread.put_nowait(task)
                elif kind == "shards":
                    self.assignments.append(list(message.shards.shards))
                elif kind == "drain":
                    self.drains.append(message.drain)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.stream_error = error
        except asyncio.CancelledError:
            pass
        finally:
            self.stream_ended.set()

    async def _send(self, request: executor_pb.ClaimTasksRequest) -> None:
        assert self._call is not None, "connect() first"
        async with self._write_lock:  # gRPC allows one write in flight per stream
            if self._call.done():
                raise AssertionError(f"{self.executor_id}: the stream has ended ({self.stream_error!r})")
            await self._call.write(request)

    async def credit(self, slots: int) -> None:
        """Grant ``slots`` more task slots."""
        await self._send(executor_pb.ClaimTasksRequest(credit=executor_pb.Credit(slots=slots)))

    async def heartbeat(self, running_tasks: int = 0) -> None:
        await self._send(
            executor_pb.ClaimTasksRequest(heartbeat=executor_pb.Heartbeat(running_tasks=running_tasks))
        )

    async def send_draining(self, reason: str = "manual executor draining") -> None:
        await self._send(executor_pb.ClaimTasksRequest(draining=executor_pb.Draining(reason=reason)))

    async def _heartbeat_forever(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, AssertionError, asyncio.InvalidStateError):
            while not self.stream_ended.is_set():
                await self.heartbeat()
                await asyncio.sleep(self.heartbeat_interval)

    async def go_silent(self) -> None:
        """Stop heartbeating but keep the stream open, like a hung process."""
        if self._heartbeater is not None:
            self._heartbeater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeater
            self._heartbeater = None

    async def disconnect(self) -> None:
        """Break the stream abruptly (like a lost connection); RecordResults still works."""
        await self.go_silent()
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def leave(self) -> None:
        """Exit cleanly, as a drained executor does: Draining, then close the stream and wait
        for the coordinator to end it."""
        await self.send_draining("leaving")
        await self.go_silent()
        if self._call is not None:
            await self._call.done_writing()
            await asyncio.wait_for(self.stream_ended.wait(), 10)

    async def close(self) -> None:
        await self.disconnect()
        await self.channel.close()

    # ------------------------------------------------------------------- tasks

    @property
    def received(self) -> list[executor_pb.Task]:
        """Every task received so far, in arrival order."""
        return [task for batch in self.batches for task in batch]

    async def take(self, count: int, *, within: float = 10.0) -> list[executor_pb.Task]:
        """The next ``count`` tasks received and not yet taken, in arrival order (waiting up
        to ``within`` seconds for them)."""
        taken: list[executor_pb.Task] = []
        try:
            async with asyncio.timeout(within):
                while len(taken) < count:
                    taken.append(await self._unread.get())
        except TimeoutError:
            raise AssertionError(
                f"{self.executor_id}: {len(taken)} of {count} task(s) arrived within {within}s "
                f"(stream ended: {self.stream_ended.is_set()}, shards: {self.assignments[-1:]})"
            ) from None
        return taken

    def untaken(self) -> int:
        """How many received tasks the test has not taken yet."""
        return self._unread.qsize()

    @staticmethod
    def success(
        task: executor_pb.Task, result_json: str, *, fencing_token: int | None = None
    ) -> executor_pb.TaskResult:
        """A successful result for ``task``, carrying its token unless another is chosen."""
        return executor_pb.TaskResult(
            task_id=task.task_id,
            fencing_token=task.fencing_token if fencing_token is None else fencing_token,
            result_json=result_json,
        )

    async def report(self, *results: executor_pb.TaskResult) -> list[int]:
        """RecordResults with exactly these results; returns the dispositions."""
        response = await self.stub.RecordResults(
            executor_pb.RecordResultsRequest(executor_id=self.executor_id, results=list(results)), timeout=10
        )
        return list(response.dispositions)
