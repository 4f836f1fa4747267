"""One coordinator per database: a second one refuses to start, naming the first.

Two coordinators on one database would each treat the other's executors as crashed and
requeue their running tasks. The first holds an exclusive lock (a PostgreSQL advisory
lock, a SQLite lock file) for its whole life; once it stops, another may start. A
coordinator that loses its PostgreSQL lock connection stops writing (fenced).
"""

from __future__ import annotations

import os
import socket

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor import WorkflowContext, workflow
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import CoordinatorServer
from conveyor.coordinator.store.ownership import ADVISORY_CLASS
from conveyor.coordinator.store.schema import coordinator_holder
from conveyor.errors import ConveyorError, DatabaseInUse, Unavailable
from support import Stack, eventually, registry_of


@workflow
async def hello(ctx: WorkflowContext, n: int) -> int:
    return n


def second_server(database_url: str) -> CoordinatorServer:
    config = CoordinatorConfig(database_url=database_url, listen="127.0.0.1:0")
    return CoordinatorServer(config, registry_of(hello))


async def test_a_second_coordinator_refuses_the_database_until_the_first_stops(database_url: str) -> None:
    first = Stack(database_url, registry_of(hello))
    try:
        await first.start_coordinator()
        second = second_server(database_url)
        with pytest.raises(DatabaseInUse) as refused:
            await second.start()
        assert isinstance(refused.value, ConveyorError)
        message = str(refused.value)
        # It names the holder: host, pid and start time of the first coordinator.
        assert socket.gethostname() in message and f"pid {os.getpid()}" in message, message
        assert "started " in message and "Stop that one first" in message, message

        # The refused coordinator changed nothing: the first still works.
        assert first.client is not None
        await first.client.start_workflows([("hello", {"n": 1})])
        await first.stop_coordinator()

        third = second_server(database_url)
        await third.start()
        await third.stop(grace=0.5)
    finally:
        await first.close()


async def test_a_coordinator_whose_lock_was_taken_by_another_stops_writing(database_url: str) -> None:
    """The lock connection dies and another coordinator takes the lock: the first must not
    write any more (fenced), even once the other lets go; health says NOT_SERVING."""
    if not database_url.startswith("postgresql"):
        pytest.skip(
            "SQLite's lock is a file lock held by the process itself: it cannot be lost while it runs"
        )
    first = Stack(database_url, registry_of(hello))
    try:
        await first.start_coordinator()
        assert first.client is not None and first.server is not None
        lock = first.coordinator.lock
        usurper = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
        with usurper.connect() as connection:
            # Kill the lock connection and wait for its lock in one go: the blocking waiter
            # is granted the lock the moment it is freed, before the first can take it again.
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(:pid), pg_advisory_lock("
                    f"{ADVISORY_CLASS}, hashtext(current_database() || '.' || current_schema()))"
                ),
                {"pid": lock.backend_pid},
            )
            connection.execute(coordinator_holder.update().values(host="usurper", pid=1))
            with pytest.raises(Unavailable) as refused:
                await first.client.start_workflows([("hello", {"n": 1})])
            assert "lost its exclusive lock" in str(refused.value)
        usurper.dispose()  # the usurper is gone: the lock is free again, but the first stays fenced

        with pytest.raises(Unavailable, match="lost its exclusive lock"):
            await first.client.start_workflows([("hello", {"n": 2})])
        async with grpc.aio.insecure_channel(first.server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def not_serving() -> bool:
                answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
                return bool(answer.status == health_pb2.HealthCheckResponse.NOT_SERVING)

            await eventually(not_serving, timeout=20)
        healthy, reason = first.coordinator.healthy()
        assert not healthy and "lost its exclusive lock" in reason

        # Another coordinator may start; the fenced one cannot disturb it.
        other = second_server(database_url)
        await other.start()
        await other.stop(grace=0.5)
    finally:
        await first.close()


async def test_a_lock_connection_that_dies_with_nobody_taking_over_is_replaced(database_url: str) -> None:
    """A dead lock connection alone (a network blip) costs nothing: nobody held the lock in
    between, so the coordinator takes it again and goes on writing."""
    if not database_url.startswith("postgresql"):
        pytest.skip(
            "SQLite's lock is a file lock held by the process itself: it cannot be lost while it runs"
        )
    first = Stack(database_url, registry_of(hello))
    try:
        await first.start_coordinator()
        assert first.client is not None
        lock = first.coordinator.lock
        old_backend = lock.backend_pid
        admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": old_backend})
        admin.dispose()
        await first.client.start_workflows([("hello", {"n": 1})])
        assert lock.backend_pid != old_backend and lock.fenced is None
        assert first.coordinator.healthy() == (True, "serving")
        with pytest.raises(DatabaseInUse):
            await second_server(database_url).start()
    finally:
        await first.close()
