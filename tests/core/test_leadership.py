"""Leadership of a PostgreSQL database: one coordinator leads, standbys take over, a deposed
leader's writes are refused in the same transaction (fencing), and SQLite keeps exactly one
coordinator.

The failover chaos (SIGKILL, SIGSTOP, a blackholed database connection, real processes) is
in tests/chaos/test_failover.py; these run in-process on the real database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor import WorkflowContext, workflow
from conveyor.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import SERVICE_NAMES, CoordinatorServer
from conveyor.coordinator.store import Database
from conveyor.coordinator.store.leadership import Leadership
from conveyor.coordinator.store.schema import leadership, workflows
from conveyor.errors import LEADER_METADATA_KEY, ConfigurationError, DatabaseInUse, Unavailable
from conveyor.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from support import eventually, registry_of


@workflow
async def hello(ctx: WorkflowContext, n: int) -> int:
    return n


def server(database_url: str, *, standby: bool = False, lease: float = 4.0) -> CoordinatorServer:
    config = CoordinatorConfig(
        database_url=database_url, listen="127.0.0.1:0", standby=standby, leader_lease=lease
    )
    return CoordinatorServer(config, registry_of(hello))


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("leadership is PostgreSQL's; SQLite allows one coordinator (its file lock)")
    return database_url


@pytest.fixture
async def servers() -> AsyncIterator[list[CoordinatorServer]]:
    started: list[CoordinatorServer] = []
    yield started
    for each in started:
        await each.stop(grace=0.2)


async def health_of(address: str, service: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
        return int(answer.status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def leader_and_standby(
    postgres_url: str, servers: list[CoordinatorServer]
) -> tuple[CoordinatorServer, CoordinatorServer]:
    """A leader, then a ``--standby`` on the same database (both stopped by ``servers``)."""
    leader = server(postgres_url)
    await leader.start()
    servers.append(leader)
    standby = server(postgres_url, standby=True)
    await standby.start()
    servers.append(standby)
    return leader, standby


async def test_sqlite_refuses_standby_with_a_clear_message(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL runs standbys")
    with pytest.raises(ConfigurationError, match="--standby needs PostgreSQL"):
        await server(database_url, standby=True).start()


async def test_leadership_terms_rise_and_a_deposed_leader_cannot_renew(postgres_url: str) -> None:
    CoordinatorServer(
        CoordinatorConfig(database_url=postgres_url), registry_of(hello)
    ).coordinator.database.migrate()
    first = Leadership(postgres_url, holder="first", address="a:1", lease=0.3)
    second = Leadership(postgres_url, holder="second", address="b:2", lease=30)
    try:
        assert first.campaign() and first.term == 1
        assert not second.campaign()
        assert second.leader is not None and second.leader.address == "a:1"
        await eventually(lambda: second.campaign(), timeout=10)  # first's 0.3 s lease ran out
        assert second.term == 2
        assert not first.renew()
        assert first.fenced is not None and "b:2" in first.fenced and not first.leading
        assert second.renew() and second.term == 2
    finally:
        first.release()
        second.release()


async def test_a_takeover_waits_for_the_leaders_open_transaction_and_then_fences_it(
    postgres_url: str,
) -> None:
    """The fence's key-share lock serializes with the takeover: while a leader's write transaction
    is open the takeover cannot lock the row; once it has taken over, the leader's next
    transaction is refused. The leader's renewals do not wait for its own transactions."""
    CoordinatorServer(
        CoordinatorConfig(database_url=postgres_url), registry_of(hello)
    ).coordinator.database.migrate()
    leader = Leadership(postgres_url, holder="leader", address="a:1", lease=30)
    engine = sa.create_engine(postgres_url)
    try:
        assert leader.campaign()
        with engine.connect() as usurper, engine.connect() as writer:
            transaction = writer.begin()
            leader.fence(writer)  # the leader's write transaction, still open
            usurper.execute(sa.text("SET lock_timeout = '200ms'"))
            # The leader's renewal does not wait for its own write transaction...
            assert leader.renew()
            # ...but a takeover's lock does.
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                usurper.execute(sa.select(leadership.c.term).with_for_update())
            usurper.rollback()
            transaction.commit()
            usurper.execute(
                leadership.update().values(term=leadership.c.term + 1, holder="usurper", address="u:9")
            )
            usurper.commit()
            with (
                writer.begin(),
                pytest.raises(Unavailable, match=r"usurper at u:9 \(term 2\) took over"),
            ):
                leader.fence(writer)
        assert not leader.leading
    finally:
        leader.release()
        engine.dispose()


async def test_a_takeover_ends_the_transactions_a_stalled_leader_left_holding_the_row(
    postgres_url: str,
) -> None:
    """A leader stalled inside a write transaction past its lease (not idle, so PostgreSQL's
    idle timeout does not end it) cannot block the takeover: its transaction is terminated."""
    CoordinatorServer(
        CoordinatorConfig(database_url=postgres_url), registry_of(hello)
    ).coordinator.database.migrate()
    stalled = Leadership(postgres_url, holder="stalled", address="a:1", lease=0.3)
    standby = Leadership(postgres_url, holder="standby", address="b:2", lease=30)
    engine = sa.create_engine(postgres_url)
    try:
        assert stalled.campaign()
        with engine.connect() as writer:
            writer.begin()
            stalled.fence(writer)  # holds the row until it ends
            await eventually(lambda: standby.campaign(), timeout=20)
            assert standby.term == 2
            with pytest.raises(sa.exc.OperationalError):  # its session was terminated
                writer.execute(sa.text("SELECT 1"))
    finally:
        stalled.release()
        standby.release()
        engine.dispose()


async def test_a_second_coordinator_without_standby_is_refused_naming_the_leader(
    postgres_url: str, servers: list[CoordinatorServer]
) -> None:
    first = server(postgres_url)
    await first.start()
    servers.append(first)
    with pytest.raises(DatabaseInUse, match=f"at {first.address} .*--standby"):
        await server(postgres_url).start()


async def test_two_coordinators_started_in_the_same_second_of_one_process_stay_apart(
    postgres_url: str, servers: list[CoordinatorServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same host, same pid, same start time (to the second a holder's description shows): the
    # standby must still know the leader is another coordinator and never renew its lease.
    monkeypatch.setattr("conveyor.coordinator.server.now_us", lambda: 1_800_000_000_000_000)
    leader, standby = await leader_and_standby(postgres_url, servers)
    assert leader.leadership is not None and standby.leadership is not None

    assert leader.leadership.holder != standby.leadership.holder
    refusal = standby.leadership.refusal()
    assert refusal.leader_address == leader.address, str(refusal)
    assert not standby.leadership.renew()
    assert not standby.leadership.campaign()


async def test_a_standby_refuses_work_names_the_leader_and_takes_over_when_it_stops(
    postgres_url: str, servers: list[CoordinatorServer]
) -> None:
    leader, standby = await leader_and_standby(postgres_url, servers)

    async with AsyncClient(leader.address) as client:
        started = await client.start_workflows([("hello", {"n": 7})])

    # Health: the standby is alive, its work services are not serving.
    assert await health_of(standby.address, "") == SERVING
    for name in SERVICE_NAMES:
        assert await health_of(standby.address, name) == NOT_SERVING
        assert await health_of(leader.address, name) == SERVING

    # A work RPC on the standby: UNAVAILABLE, the leader's address in the message and metadata.
    async with grpc.aio.insecure_channel(standby.address) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(workflow_id=started[0].workflow_id)
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert leader.address in (refused.value.details() or "")
    assert (LEADER_METADATA_KEY, leader.address) in tuple(refused.value.trailing_metadata() or ())

    # The leader stops (resigning): the standby takes over, recovers and serves what it wrote.
    await leader.stop(grace=0.2)
    servers.remove(leader)

    async def standby_serves() -> bool:
        return await health_of(standby.address, SERVICE_NAMES[0]) == SERVING

    await eventually(standby_serves, timeout=20)
    assert standby.leadership is not None and standby.leadership.term == 2
    async with AsyncClient(standby.address) as client:
        done = await client.wait(started[0].workflow_id, timeout=20)
        assert done.status == WorkflowStatus.COMPLETED


async def test_a_deposed_leader_has_its_writes_refused_and_stands_by(
    postgres_url: str, servers: list[CoordinatorServer]
) -> None:
    first = server(postgres_url)
    await first.start()
    servers.append(first)
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                leadership.update().values(
                    term=leadership.c.term + 1,
                    holder="usurper",
                    address="10.9.9.9:50051",
                    deadline_us=sa.literal_column("9000000000000000"),
                )
            )
        async with AsyncClient(first.address) as client:
            with pytest.raises(Unavailable, match=r"10\.9\.9\.9:50051"):
                await client.start_workflows([("hello", {"n": 1})])
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(workflows)).scalar_one() == 0

        async def stood_by() -> bool:
            return await health_of(first.address, SERVICE_NAMES[0]) == NOT_SERVING

        await eventually(stood_by, timeout=20)
        assert await health_of(first.address, "") == SERVING
        assert first.leadership is not None and not first.leadership.leading
    finally:
        engine.dispose()


async def test_a_coordinator_restarted_after_its_leader_crashed_takes_over_once_the_lease_runs_out(
    postgres_url: str, servers: list[CoordinatorServer]
) -> None:
    """The leader died without resigning (SIGKILL): its lease still runs. Restarting a coordinator,
    without --standby, waits that lease out and leads, rather than refusing a database nobody leads."""
    database = Database(postgres_url)
    database.migrate()
    database.dispose()
    crashed = Leadership(postgres_url, holder="host-a/pid-1 (crashed)", address="10.0.0.9:50051", lease=2.0)
    assert crashed.campaign()
    crashed.release()  # no resignation: the row keeps the dead leader's lease

    restarted = server(postgres_url, lease=2.0)
    await restarted.start()
    servers.append(restarted)

    assert restarted.leadership is not None and restarted.leadership.leading
    assert restarted.leadership.term == 2
