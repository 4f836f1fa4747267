"""One coordinator per database: a second one refuses to start, naming the first.

Two coordinators on one database would each treat the other's executors as crashed and
requeue their running tasks. The first holds the database (a SQLite lock file, the
leadership row on PostgreSQL) for its whole life; once it stops, another may start.

On PostgreSQL the exclusivity is the database's leadership (store/leadership.py): a second
coordinator is refused unless started with --standby, and a deposed leader's writes are
refused; tests/core/test_leadership.py covers those.
"""

from __future__ import annotations

import os
import socket

import pytest

from conveyor import WorkflowContext, workflow
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import CoordinatorServer
from conveyor.errors import ConveyorError, DatabaseInUse
from support import Stack, registry_of


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
