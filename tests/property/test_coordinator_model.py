"""The whole coordinator under random interleavings of executors, operators and faults.

Hypothesis drives a real :class:`conveyor.coordinator.engine.Coordinator` (in-process, its
own writer thread and background loops, a real SQLite file or PostgreSQL schema)
through random sequences of what happens to a coordinator in production: workflows
start (chains of steps, sleeps, ``asyncio.gather``); executors connect, heartbeat,
run and report tasks, report late, twice, with stale tokens or malformed; they go
silent and lose their lease, reconnect holding tasks, crash on poison tasks, drain
after an epoch bump; clients cancel; operators fail pending tasks and clear queues;
the coordinator restarts; writes fail before their commit, for good, or commit and
then raise (an unknown outcome); workflow code raises ``BaseException``.

After every step:

* Diagnose's invariant checks find nothing (among them the replay-queue invariant: a
  running workflow with a finished step whose outcome is not delivered yet, or with
  nothing in progress, has a replay-queue entry: a workflow advances on any completion);
* no task is claimed by an executor the coordinator no longer knows
  (live, draining, or disconnected and still within its lease);
* no step result is applied twice, and each completed step holds the result that
  was accepted for it.

At the end, once the faults stop, every executor comes back healthy and works until
every workflow is terminal (completed, failed or cancelled), within a generous bound:
the liveness promise "nothing stuck, ever" (issue 9).

Rules are grouped in *families*, each exercising one item of issue 9
(:data:`FAMILIES`). ``CONVEYOR_MODEL_FAMILIES`` picks them (comma-separated, or
``all``); the default, :data:`DEFAULT_FAMILIES`, is the families the coordinator
passes today. ``CONVEYOR_MODEL_EXAMPLES`` / ``CONVEYOR_MODEL_STEPS`` scale the run
(``make model-long`` runs a long profile of every family).

Timing: the coordinator's clock is the wall clock (``conveyor.coordinator.clock.now_us`` is a
plain function its modules import, so it cannot be injected). The machine therefore
never asserts on time: leases never expire on their own (``lease_ttl`` is an hour)
but only through the ``lease_expires`` rule, and the only waits are for conditions
(quiescence), bounded generously.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conveyor.coordinator.api.executor_service import ExecutorService
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.engine import Coordinator
from conveyor.coordinator.model import StepStatus, WorkflowStatus
from conveyor.coordinator.sessions import ExecutorSession, SessionState
from conveyor.coordinator.store.schema import ALL_TABLES, steps, tasks, workflows
from conveyor.errors import ConveyorError
from conveyor.v1 import common_pb2
from conveyor.v1 import executor_service_pb2 as pb
from conveyor.workflow import RetryPolicy, WorkflowContext, WorkflowRegistry, workflow

T = TypeVar("T")

# ------------------------------------------------------------------ families

#: Family -> what it exercises (the item of issue 9 it would have caught).
FAMILIES: dict[str, str] = {
    "core": "start workflows (chains, short sleeps, gather of single steps), executors connect, "
    "heartbeat, run and report tasks, grant credit",
    "duplicates": "results reported twice, with stale tokens, or by the wrong executor (fencing)",
    "cancel": "clients cancel running workflows while executors hold their tasks",
    "admin": "FailPendingTasks, ClearTaskQueue, ClearReplayQueue (operators)",
    "disconnect": "streams close and executors reconnect holding their tasks, within the lease",
    "restart": "the coordinator restarts; executors reconnect holding tasks (recovery)",
    "failed_writes": "a write transaction fails before its commit (retried) or for good, and database "
    "outages past the retry deadline (item 3: loops whose wake-up was cleared before the failed work "
    "never re-arm)",
    "lease_expiry": "an executor misses its lease, then reconnects holding the task it was running "
    "(item 4: the re-claimed task is ignored by its holder and stays claimed forever)",
    "poison": "a task crashes its executor, which restarts under the same id (item 5)",
    "hung": "a live, heartbeating executor never reports one task (item 6: no server-side deadline)",
    "gather": "asyncio.gather over branches of two steps (item 8: false non-determinism)",
    "bad_text": "a handler result with a lone surrogate flows into later arguments (item 1)",
    "huge_sleep": "ctx.sleep(1e13) overflows the wake time (item 1)",
    "base_exception": "workflow code raises SystemExit / KeyboardInterrupt (item 2)",
    "unknown_commit": "a write commits, then reports a connection error, and is retried (item 11)",
    "epoch": "BumpEpoch, draining executors and re-registration in the new epoch (item 12)",
    "malformed": "a RecordResults batch with one malformed result next to good ones (item 13)",
    "race": "asyncio.wait(FIRST_COMPLETED) with the loser cancelled on its executor, wait_for timeouts "
    "and asyncio.sleep: workflows advance on any completion (issue 12, item 3)",
}

#: Every family runs in `make test`. Before the fixes of issue 9 each family but the first
#: six found its bug: malformed (item 13), gather (8), base_exception (2), huge_sleep and
#: bad_text (1), poison (5), hung (6), unknown_commit (11), lease_expiry (4), epoch (12),
#: failed_writes (3).
DEFAULT_FAMILIES: tuple[str, ...] = tuple(FAMILIES)


def selected_families() -> frozenset[str]:
    raw = os.environ.get("CONVEYOR_MODEL_FAMILIES", "").strip()
    if not raw:
        return frozenset(DEFAULT_FAMILIES)
    if raw == "all":
        return frozenset(FAMILIES)
    chosen = frozenset(name.strip() for name in raw.split(",") if name.strip())
    unknown = chosen - set(FAMILIES)
    if unknown:
        raise ValueError(
            f"CONVEYOR_MODEL_FAMILIES names unknown families {sorted(unknown)}; known: {sorted(FAMILIES)}"
        )
    return chosen | {"core"}


EXAMPLES = int(os.environ.get("CONVEYOR_MODEL_EXAMPLES", "10"))
STEPS = int(os.environ.get("CONVEYOR_MODEL_STEPS", "25"))
#: How long the end of an example may take to bring every workflow to a terminal state.
QUIESCENCE_TIMEOUT = float(os.environ.get("CONVEYOR_MODEL_QUIESCENCE_TIMEOUT", "60"))
#: Any single coordinator call; far beyond what one takes on a busy machine, so that a
#: hang (a dead writer thread) fails the example instead of the whole run.
CALL_TIMEOUT = float(os.environ.get("CONVEYOR_MODEL_CALL_TIMEOUT", "60"))

EXECUTORS = ("exec-a", "exec-b", "exec-c")
CAPACITY = 3
KIND = "work"

# ---------------------------------------------------------------- workflows

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0, max_rate_limit_waits=2)


async def _step(ctx: WorkflowContext, label: str, **flags: Any) -> Any:
    return await ctx.task(KIND, {"label": label, **flags}, name=label, retry=FAST_RETRY)


@workflow(name="chain")
async def chain(ctx: WorkflowContext, length: int) -> int:
    total = 0
    for number in range(length):
        total += await _step(ctx, f"s{number}")
    return total


@workflow(name="sleepy")
async def sleepy(ctx: WorkflowContext) -> int:
    await ctx.sleep(0.001)
    return int(await _step(ctx, "after-sleep"))


@workflow(name="fan_out")
async def fan_out(ctx: WorkflowContext) -> int:
    a, b = await asyncio.gather(_step(ctx, "a"), _step(ctx, "b"))
    return int(a) + int(b)


async def _branch(ctx: WorkflowContext, name: str) -> int:
    first = await _step(ctx, f"{name}1")
    return int(first) + int(await _step(ctx, f"{name}2"))


@workflow(name="gather_branches")
async def gather_branches(ctx: WorkflowContext) -> int:
    a, b = await asyncio.gather(_branch(ctx, "a"), _branch(ctx, "b"))
    return a + b


@workflow(name="bad_text")
async def bad_text(ctx: WorkflowContext) -> Any:
    value = await _step(ctx, "surrogate", surrogate=True)
    return await _step(ctx, "echo", previous=value)


@workflow(name="huge_sleep")
async def huge_sleep(ctx: WorkflowContext) -> None:
    await ctx.sleep(1e13)


@workflow(name="raiser")
async def raiser(ctx: WorkflowContext, how: str) -> None:
    await _step(ctx, "before-raise")
    if how == "exit":
        raise SystemExit(3)
    raise KeyboardInterrupt


@workflow(name="poison")
async def poison(ctx: WorkflowContext) -> int:
    return int(await _step(ctx, "poison", poison=True))


@workflow(name="hung")
async def hung(ctx: WorkflowContext) -> int:
    value = await ctx.task(KIND, {"label": "hung", "hang": True}, name="hung", retry=FAST_RETRY, timeout=0.5)
    return int(value)


@workflow(name="race")
async def race(ctx: WorkflowContext) -> int:
    first = asyncio.ensure_future(_step(ctx, "r1"))
    second = asyncio.ensure_future(_step(ctx, "r2"))
    done, pending = await asyncio.wait([first, second], return_when=asyncio.FIRST_COMPLETED)
    for loser in pending:
        loser.cancel()
    winner = next(task for task in (first, second) if task in done).result()
    return int(winner) + int(await _step(ctx, "after-race"))


@workflow(name="deadline")
async def deadline(ctx: WorkflowContext) -> int:
    try:
        value = await asyncio.wait_for(_step(ctx, "bounded"), timeout=0.05)
    except TimeoutError:
        value = 1
    await asyncio.sleep(0.001)
    return int(value)


#: What each workflow that completes must return: every step's result is 1, counted once.
EXPECTED_RESULTS: dict[str, Callable[[list[Any]], Any]] = {
    "chain": lambda args: args[0],
    "sleepy": lambda args: 1,
    "fan_out": lambda args: 2,
    "gather_branches": lambda args: 4,
    "poison": lambda args: 1,
    "hung": lambda args: 1,
    "race": lambda args: 2,
    "deadline": lambda args: 1,
}


#: Families whose faults may legitimately fail or cancel a workflow; without them, every one completes.
MAY_FAIL_OR_CANCEL = frozenset(
    {"admin", "cancel", "lease_expiry", "poison", "hung", "bad_text", "huge_sleep", "base_exception"}
)

REGISTRY = WorkflowRegistry()
for _function in (
    chain,
    sleepy,
    fan_out,
    gather_branches,
    bad_text,
    huge_sleep,
    raiser,
    poison,
    hung,
    race,
    deadline,
):
    REGISTRY.register(_function)

#: (workflow name, args) per family that adds workflows.
STARTS: dict[str, list[tuple[str, list[Any]]]] = {
    "core": [("chain", [1]), ("chain", [3]), ("sleepy", []), ("fan_out", [])],
    "gather": [("gather_branches", [])],
    "bad_text": [("bad_text", [])],
    "huge_sleep": [("huge_sleep", [])],
    "base_exception": [("raiser", ["exit"]), ("raiser", ["interrupt"])],
    "poison": [("poison", [])],
    "hung": [("hung", [])],
    "race": [("race", []), ("deadline", [])],
}

# ------------------------------------------------------- the model executor


@dataclass
class ModelExecutor:
    """An executor as the coordinator sees it through its stream; behaves like executor/worker.py."""

    executor_id: str
    session: ExecutorSession | None = None
    #: The epoch it was welcomed into (0: a new process).
    epoch: int = 0
    #: task id -> the task as delivered (its token): running, or finished and unreported.
    held: dict[int, pb.Task] = field(default_factory=dict)
    draining: bool = False
    #: It ran a poison task: the process dies at the next chance.
    crashing: bool = False
    #: (task id, token, result) of results reported before, to send again as duplicates.
    reported: list[tuple[int, int, str]] = field(default_factory=list)


def task_flags(task: pb.Task) -> dict[str, Any]:
    """The payload ``_step`` gave the task (a handler task's payload_json is {"kind", "payload"})."""
    payload = json.loads(task.payload_json)
    inner = payload.get("payload") if isinstance(payload, dict) else None
    return inner if isinstance(inner, dict) else {}


def task_result(task: pb.Task) -> pb.TaskResult:
    """What the handler returns for ``task``: a number, or the flagged misbehaviour."""
    if task_flags(task).get("surrogate"):
        return pb.TaskResult(task_id=task.task_id, fencing_token=task.fencing_token, result_json='"\\ud800"')
    return pb.TaskResult(task_id=task.task_id, fencing_token=task.fencing_token, result_json="1")


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class _CallContext:
    """The bits of a gRPC servicer context ExecutorService.RecordResults uses (no authentication)."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Refused(code, details)


# ------------------------------------------------------- internals, isolated


class WriteFaults:
    """Injects faults into the coordinator's write transactions.

    Internal on purpose: the coordinator has no public hook to make a commit fail, and
    real database faults (killing PostgreSQL, locking SQLite) are the chaos suite's
    job at a cost this machine cannot pay per step. Wrapping ``Writer._transaction``
    (one batch: BEGIN, the units, COMMIT) gives the three outcomes a real database can
    produce: a failure before the commit (the writer retries on a fresh connection), a
    failure for good (every unit of the batch gets ``Unavailable``), and a commit that
    succeeded but was reported as a connection error (the unknown outcome).
    """

    def __init__(self, coordinator: Coordinator) -> None:
        #: (fault, the unit label it waits for, or "" for whatever transaction comes next)
        self._pending: list[tuple[str, str]] = []
        #: While set, every transaction fails for good.
        self.outage = False
        #: The thread whose next COMMIT commits and then reports a broken connection.
        self._break_commit_on: int | None = None
        self._lock = threading.Lock()
        writer = coordinator.writer
        real = writer._transaction

        def transaction(batch: list[Any]) -> list[tuple[Any, BaseException | None]]:
            if self.outage:
                raise RuntimeError("injected: the database is down (outage past the retry deadline)")
            fault = None
            with self._lock:
                labels = {pending.label for pending in batch}
                for index, (kind, label) in enumerate(self._pending):
                    if not label or label in labels:
                        fault = kind
                        del self._pending[index]
                        break
            if fault == "before":
                raise sa.exc.OperationalError(
                    "COMMIT", None, Exception("injected: connection lost before commit")
                )
            if fault == "forever":
                raise RuntimeError("injected: the database refused the transaction")
            if fault == "after":
                self._break_commit_on = threading.get_ident()
            try:
                return real(batch)
            finally:
                self._break_commit_on = None

        # The unknown outcome is raised by the COMMIT itself, after the server committed, as a
        # connection dropping at that moment would: the writer must learn what happened.
        dialect = writer._engine.dialect
        real_commit = dialect.do_commit

        def do_commit(dbapi_connection: Any) -> None:
            real_commit(dbapi_connection)
            if self._break_commit_on == threading.get_ident():
                self._break_commit_on = None
                raise dialect.loaded_dbapi.OperationalError(
                    "server closed the connection unexpectedly (injected after the commit succeeded)"
                )

        writer._transaction = transaction  # type: ignore[method-assign]
        dialect.do_commit = do_commit  # type: ignore[method-assign]

    def add(self, fault: str, label: str) -> None:
        with self._lock:
            self._pending.append((fault, label))

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
        self.outage = False


async def lose_lease(coordinator: Coordinator, session: ExecutorSession) -> None:
    """Internal: what the lease loop does once ``lease_ttl`` passes without a heartbeat.

    The machine's lease is an hour so that time never decides anything; this runs the
    expiry itself, at the moment Hypothesis chooses. A write failure ends the attempt as it
    ends one lease-loop pass (its supervisor logs it); what it leaves behind is for the
    invariants to judge.
    """
    with contextlib.suppress(ConveyorError):
        await coordinator.membership.expire(session)


def writer_alive(coordinator: Coordinator) -> bool:
    """Internal: whether the single writer thread still runs.

    A dead writer makes every later write hang (issue 9, item 2); checking the thread
    turns that hang into an immediate, named failure instead of a call timeout.
    """
    return coordinator.writer._thread.is_alive()


#: Units a write fault may wait for (the labels of ``Coordinator._write`` calls); "" is any.
WRITE_LABELS = ("", "replay", "claim", "record results", "start", "fire timers", "expire lease", "bump epoch")

#: Which of the things present to act on. Drawn as a plain number whatever is present, so that
#: what Hypothesis draws never depends on timing (which would make its replays inconsistent).
PICK = st.integers(0, 1000)

# ----------------------------------------------------------------- machine


class CoordinatorMachine(RuleBasedStateMachine):
    database_url: str  # set by the test, once per database
    families: frozenset[str] = frozenset(DEFAULT_FAMILIES)

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.coordinator: Coordinator | None = None
        self.faults: WriteFaults | None = None
        self.executors = {name: ModelExecutor(name) for name in EXECUTORS}
        self.workflow_ids: list[str] = []
        #: task id -> (token, executor) of the success result applied to its step.
        self.applied: dict[int, tuple[int, str]] = {}
        #: task id -> success results whose RecordResults answered UNAVAILABLE (outcome unknown).
        self.maybe_applied: dict[int, set[tuple[int, str]]] = {}
        self.hung_tasks: set[int] = set()
        self.broken = False
        #: Workflows asked for in StartWorkflows calls that failed (their outcome is unknown).
        self.unknown_starts = 0
        self.config = CoordinatorConfig(
            database_url=self.database_url,
            shards=2,
            heartbeat_interval=1.0,
            lease_ttl=3600.0,
            group_commit_window=0.0,
            replay_batch_size=5,
            database_retry_deadline=5.0,
            sqlite_synchronous="NORMAL",
            # A hung attempt (the `hung` family, timeout 0.5 s) is taken back soon after.
            task_deadline_grace=0.5,
        )

    # ------------------------------------------------------------ plumbing

    def run(self, awaitable: Awaitable[T], bound: float = CALL_TIMEOUT) -> T:
        async def bounded() -> T:
            call = asyncio.ensure_future(awaitable)
            deadline = asyncio.get_running_loop().time() + bound
            while not call.done():
                await asyncio.wait([call], timeout=0.25)
                if call.done():
                    break
                if self.coordinator is not None and not writer_alive(self.coordinator):
                    call.cancel()
                    raise AssertionError(
                        "the coordinator's writer thread died: every write from now on hangs"
                    )
                if asyncio.get_running_loop().time() > deadline:
                    call.cancel()
                    raise AssertionError(
                        f"a coordinator call did not finish within {bound}s: a write or a loop is hung"
                    )
            return call.result()

        try:
            return self.loop.run_until_complete(bounded())
        except BaseException:
            self.broken = True  # the example failed: teardown only stops the coordinator
            raise

    @property
    def c(self) -> Coordinator:
        assert self.coordinator is not None
        return self.coordinator

    async def _start_coordinator(self) -> None:
        coordinator = Coordinator(self.config, REGISTRY)
        await coordinator.start()
        self.faults = WriteFaults(coordinator)
        self.coordinator = coordinator

    async def _settle(self) -> None:
        """Let the background loops take their turns (progress only; nothing asserts on time)."""
        for _ in range(3):
            await asyncio.sleep(0.005)

    def teardown(self) -> None:
        try:
            if self.coordinator is not None and not self.broken:
                # Past its own bound the quiescence names the stuck workflows; this outer
                # bound only catches a hang of the coordinator calls it makes.
                self.run(self._quiesce(), bound=QUIESCENCE_TIMEOUT + CALL_TIMEOUT)
        finally:
            try:
                if self.coordinator is not None:
                    self.loop.run_until_complete(asyncio.wait_for(self.c.stop(), CALL_TIMEOUT))
            finally:
                self.loop.close()

    @initialize(data=st.data(), count=st.integers(1, 3))
    def fresh_coordinator(self, data: st.DataObject, count: int) -> None:
        """Empty tables and a new coordinator with a few workflows, so that no example is idle."""
        engine = sa.create_engine(self.database_url)
        try:
            with engine.begin() as connection:
                for table in reversed(ALL_TABLES):
                    connection.execute(sa.delete(table))
        finally:
            engine.dispose()
        self.run(self._start_coordinator())
        self.start_workflows(data, count)

    def has(self, family: str) -> bool:
        return family in self.families

    # ---------------------------------------------------- executor plumbing

    async def _connect(self, executor: ModelExecutor) -> None:
        if executor.session is not None:
            return
        hello = pb.Hello(
            executor_id=executor.executor_id,
            epoch=executor.epoch,
            task_kinds=[KIND],
            capacity=CAPACITY,
            free_slots=max(0, CAPACITY - len(executor.held)),
            held_task_ids=sorted(executor.held),
        )
        with contextlib.suppress(ConveyorError):
            executor.session = await self.c.connect_executor(hello, "model")

    async def _stream_closed(self, executor: ModelExecutor) -> None:
        session, executor.session = executor.session, None
        if session is not None:
            with contextlib.suppress(ConveyorError):
                await self.c.executor_stream_closed(session)

    async def _process_dies(self, executor: ModelExecutor) -> None:
        """The executor process exits: it forgets everything and restarts under the same id."""
        await self._stream_closed(executor)
        executor.held.clear()
        executor.epoch, executor.draining, executor.crashing = 0, False, False

    async def _pump(self, executor: ModelExecutor) -> None:
        """Read what the coordinator sent down the stream, as executor/worker.py does."""
        session = executor.session
        if session is None:
            return
        while not session.outbox.empty():
            message = session.outbox.get_nowait()
            if message is None:
                await self._stream_closed(executor)
                return
            kind = message.WhichOneof("message")
            if kind == "welcome":
                executor.epoch = message.welcome.epoch
            elif kind == "tasks":
                for task in message.tasks.tasks:
                    # A task it already holds came again (re-claimed for it after a lost
                    # lease): not run twice, its newer token adopted for the result.
                    executor.held[task.task_id] = task
                    flags = task_flags(task)
                    if flags.get("poison"):
                        executor.crashing = True
                    if flags.get("hang"):
                        self.hung_tasks.add(task.task_id)
            elif kind == "cancel":
                # Stop the named attempts (token 0: any attempt of the task); the real
                # executor reports them as cancelled, which the coordinator answers STALE.
                for attempt in message.cancel.tasks:
                    task = executor.held.get(attempt.task_id)
                    if task is not None and attempt.fencing_token in (0, task.fencing_token):
                        del executor.held[attempt.task_id]
                        self.hung_tasks.discard(attempt.task_id)
            elif kind == "drain" and not executor.draining:
                executor.draining = True
                with contextlib.suppress(ConveyorError):
                    await self.c.executor_draining(session, "model: told to drain")
        if executor.crashing:
            await self._process_dies(executor)
        elif executor.draining and not executor.held and executor.session is not None:
            await self._process_dies(executor)  # drained: exits 0; its supervisor starts it again

    async def _report(self, executor: ModelExecutor, results: list[pb.TaskResult]) -> list[int] | None:
        """RecordResults through the real servicer (its validation included); dispositions or None."""
        service = ExecutorService(self.c)
        request = pb.RecordResultsRequest(executor_id=executor.executor_id, results=results)
        try:
            response = await service.RecordResults(request, _CallContext())
        except Refused as refused:
            if refused.code == grpc.StatusCode.UNAVAILABLE:
                # Not known to be applied, nor known not to be (a commit may have succeeded
                # before the connection broke): the executor keeps them and reports again.
                for result in results:
                    if result.WhichOneof("outcome") == "result_json":
                        key = (result.fencing_token, executor.executor_id)
                        self.maybe_applied.setdefault(result.task_id, set()).add(key)
                return None
            raise
        dispositions = [int(d) for d in response.dispositions]
        for result, disposition in zip(results, dispositions, strict=True):
            self._note_disposition(executor, result, disposition)
        return dispositions

    def _note_disposition(self, executor: ModelExecutor, result: pb.TaskResult, disposition: int) -> None:
        if result.WhichOneof("outcome") != "result_json":
            return
        key = (result.fencing_token, executor.executor_id)
        if disposition == pb.RESULT_DISPOSITION_ACCEPTED:
            before = self.applied.get(result.task_id)
            assert before is None, (
                f"task {result.task_id}: a second success result ({key}) was accepted after {before}: "
                "a step result applied twice"
            )
            self.applied[result.task_id] = key
        elif disposition == pb.RESULT_DISPOSITION_DUPLICATE:
            # An unknown-outcome commit's retry answers DUPLICATE for what the first try applied.
            before = self.applied.setdefault(result.task_id, key)
            assert before == key, f"task {result.task_id}: DUPLICATE for {key}, but {before} was applied"

    async def _work(self, executor: ModelExecutor, limit: int) -> None:
        """Run and report up to ``limit`` held tasks (hung ones never finish)."""
        await self._pump(executor)
        if executor.session is None:
            return
        ready = [t for t in executor.held.values() if t.task_id not in self.hung_tasks][:limit]
        if not ready:
            return
        results = [task_result(task) for task in ready]
        dispositions = await self._report(executor, results)
        if dispositions is None:
            return  # not applied: it keeps them and reports again later
        for task, result in zip(ready, results, strict=True):
            del executor.held[task.task_id]
            executor.reported.append((task.task_id, task.fencing_token, result.result_json))
        if executor.session is not None and not executor.draining:
            self.c.grant_credit(executor.session, len(ready))
        await self._pump(executor)

    # ----------------------------------------------------------------- rules

    @rule(data=st.data(), count=st.integers(1, 3))
    def start_workflows(self, data: st.DataObject, count: int) -> None:
        choices = [start for family, starts in STARTS.items() if self.has(family) for start in starts]
        requests = []
        for _ in range(count):
            name, args = data.draw(st.sampled_from(choices))
            requests.append((name, json.dumps(args), ""))

        async def start() -> None:
            try:
                started = await self.c.start_workflows(requests)
            except ConveyorError:
                self.unknown_starts += len(requests)  # a write failure: maybe started, maybe not
            else:
                self.workflow_ids.extend(s.workflow_id for s in started)
            await self._settle()

        self.run(start())

    @rule(executor=st.sampled_from(EXECUTORS))
    def executor_connects(self, executor: str) -> None:
        async def connect() -> None:
            await self._connect(self.executors[executor])
            await self._settle()
            await self._pump(self.executors[executor])

        self.run(connect())

    @rule(executor=st.sampled_from(EXECUTORS), limit=st.integers(1, CAPACITY))
    def executor_works(self, executor: str, limit: int) -> None:
        async def work() -> None:
            await self._work(self.executors[executor], limit)
            await self._settle()

        self.run(work())

    @rule(executor=st.sampled_from(EXECUTORS))
    def executor_heartbeats(self, executor: str) -> None:
        model = self.executors[executor]
        if model.session is not None:
            self.c.executor_alive(model.session)

    @precondition(lambda self: self.has("duplicates"))
    @rule(pick=PICK, how=st.sampled_from(["duplicate", "stale", "other executor"]))
    def executor_reports_again(self, pick: int, how: str) -> None:
        """An old result again: a retried RecordResults, a stale token, a confused executor."""
        reports = [(e, r) for e in self.executors.values() for r in e.reported]
        if not reports:
            return
        executor, (task_id, token, result_json) = reports[pick % len(reports)]
        if how == "stale":
            token -= 1
        elif how == "other executor":
            executor = next(e for e in self.executors.values() if e is not executor)
        result = pb.TaskResult(task_id=task_id, fencing_token=token, result_json=result_json)
        dispositions = self.run(self._report(executor, [result]))
        if dispositions is not None and how != "duplicate":
            assert dispositions == [pb.RESULT_DISPOSITION_STALE], (how, dispositions)

    @precondition(lambda self: self.has("disconnect"))
    @rule(executor=st.sampled_from(EXECUTORS))
    def stream_drops(self, executor: str) -> None:
        """The stream breaks; the executor keeps running what it holds and reconnects later."""
        self.run(self._stream_closed(self.executors[executor]))

    @precondition(lambda self: self.has("cancel"))
    @rule(pick=PICK)
    def client_cancels(self, pick: int) -> None:
        if not self.workflow_ids:
            return
        workflow_id = self.workflow_ids[pick % len(self.workflow_ids)]

        async def cancel() -> None:
            with contextlib.suppress(ConveyorError):  # already finished: FAILED_PRECONDITION
                await self.c.cancel_workflow(workflow_id, "model: client cancels")

        self.run(cancel())

    @precondition(lambda self: self.has("admin"))
    @rule(
        operation=st.sampled_from(["fail pending", "clear tasks", "clear replays"]), limit=st.integers(0, 2)
    )
    def operator_acts(self, operation: str, limit: int) -> None:
        async def act() -> None:
            with contextlib.suppress(ConveyorError):
                if operation == "fail pending":
                    await self.c.fail_pending_tasks(None, limit, "model: operator")
                elif operation == "clear tasks":
                    await self.c.clear_task_queue(None, limit, "model: operator")
                else:
                    await self.c.clear_replay_queue(None, limit, "model: operator")
            await self._settle()

        self.run(act())

    @precondition(lambda self: self.has("epoch"))
    @rule()
    def operator_bumps_epoch(self) -> None:
        async def bump() -> None:
            with contextlib.suppress(ConveyorError):
                await self.c.bump_epoch("model: new release")
            for executor in self.executors.values():
                await self._pump(executor)

        self.run(bump())

    @precondition(lambda self: self.has("epoch"))
    @rule(executor=st.sampled_from(EXECUTORS))
    def executor_connects_during_epoch_bump(self, executor: str) -> None:
        """A registration racing BumpEpoch (both in flight at once, as two RPCs can be)."""
        model = self.executors[executor]

        async def race() -> None:
            await self._stream_closed(model)
            with contextlib.suppress(ConveyorError):
                await asyncio.gather(
                    self.c.bump_epoch("model: release during a reconnect"), self._connect(model)
                )
            for each in self.executors.values():
                await self._pump(each)

        self.run(race())

    @precondition(lambda self: self.has("restart"))
    @rule()
    def coordinator_restarts(self) -> None:
        async def restart() -> None:
            old, self.coordinator = self.c, None
            await old.stop()
            for executor in self.executors.values():
                executor.session = None  # its stream ended; it keeps what it holds
            await self._start_coordinator()

        self.run(restart())

    @precondition(lambda self: self.has("lease_expiry"))
    @rule(executor=st.sampled_from(EXECUTORS))
    def lease_expires(self, executor: str) -> None:
        """The executor paused (GC, VM, network): no heartbeat for a lease; it still runs its tasks."""
        session = self.c.sessions.get(executor)
        if session is not None:
            self.run(lose_lease(self.c, session))
            self.executors[executor].session = None

    @precondition(lambda self: self.has("lease_expiry"))
    @rule(executor=st.sampled_from(EXECUTORS))
    def lease_expires_and_executor_reconnects(self, executor: str) -> None:
        """A pause just past the lease: the executor is back at once, holding what it ran."""
        session = self.c.sessions.get(executor)
        model = self.executors[executor]
        if session is None:
            return

        async def pause() -> None:
            await lose_lease(self.c, session)
            model.session = None
            await self._connect(model)
            await self._settle()
            await self._pump(model)

        self.run(pause())

    @precondition(lambda self: self.has("failed_writes") or self.has("unknown_commit"))
    @rule(data=st.data(), label=st.sampled_from(WRITE_LABELS))
    def next_write_fails(self, data: st.DataObject, label: str) -> None:
        """The next write transaction (with a unit of ``label``, if given) fails or has an unknown outcome."""
        kinds = (["before", "forever"] if self.has("failed_writes") else []) + (
            ["after"] if self.has("unknown_commit") else []
        )
        assert self.faults is not None
        self.faults.add(data.draw(st.sampled_from(kinds)), label)

    @precondition(lambda self: self.has("failed_writes"))
    @rule(executor=st.sampled_from(EXECUTORS))
    def database_outage(self, executor: str) -> None:
        """An executor's results commit, then the database is gone past the retry deadline.

        The outage starts before the coordinator's loops take their turn on the work those
        results made (a replay, a claim), so their writes fail for good; when it ends, every
        piece of work must still get done without unrelated traffic to wake it (item 3).
        """
        faults = self.faults
        assert faults is not None

        async def outage() -> None:
            await self._work(self.executors[executor], CAPACITY)
            faults.outage = True  # no await since the results committed: the loops have not run
            try:
                for _ in range(10):
                    await asyncio.sleep(0.02)
            finally:
                faults.outage = False

        self.run(outage())

    @precondition(lambda self: self.has("malformed"))
    @rule(executor=st.sampled_from(EXECUTORS))
    def executor_reports_malformed(self, executor: str) -> None:
        """A good result and one with its error class unset, in one batch."""
        model = self.executors[executor]

        async def report() -> None:
            await self._pump(model)
            ready = [t for t in model.held.values() if t.task_id not in self.hung_tasks]
            if model.session is None or not ready:
                return
            good = task_result(ready[0])
            malformed = pb.TaskResult(task_id=ready[0].task_id + 10_000, fencing_token=1)
            malformed.failure.CopyFrom(pb.TaskFailure(error_class=common_pb2.ERROR_CLASS_UNSPECIFIED))
            try:
                dispositions = await self._report(model, [good, malformed])
            except Refused as refused:
                raise AssertionError(
                    f"one malformed result refused the whole batch, the good one too: {refused}"
                ) from None
            if dispositions is not None:
                del model.held[ready[0].task_id]
                model.reported.append((good.task_id, good.fencing_token, good.result_json))
                self.c.grant_credit(model.session, 1)

        self.run(report())

    # ------------------------------------------------------------ invariants

    @invariant()
    def invariants_hold(self) -> None:
        if self.coordinator is None:
            return
        self.run(self._check())

    async def _check(self) -> None:
        report = await self.c.diagnose(20)
        assert not report.violations, [(v.kind, v.description, v.workflow_ids) for v in report.violations]
        await self._check_results_applied_once()
        stale = [
            (s.executor_id, s.epoch)
            for s in self.c.sessions
            if s.state is SessionState.LIVE and s.epoch != self.c.epoch
        ]
        assert not stale, f"live executors outside the current epoch {self.c.epoch} (never drained): {stale}"
        await self._check_outcomes(final=False)
        # A claim and the end of its executor's session may be in flight together (the dispatch
        # loop then gives the tasks back): only claims that stay orphaned are a violation.
        deadline = asyncio.get_running_loop().time() + 10.0
        while orphans := await self._orphaned_claims():
            assert asyncio.get_running_loop().time() < deadline, (
                f"tasks claimed by executors the coordinator does not know: {orphans}"
            )
            await asyncio.sleep(0.05)

    async def _check_outcomes(self, *, final: bool) -> None:
        """Finished workflows finished for a reason the faults explain, with the right result.

        Our workflow code is deterministic, so a non-determinism failure is always a
        coordinator bug; a completed workflow must return what its steps add up to (a
        step result applied twice, or lost, changes it). At the end (``final``), with no
        family that may fail or cancel work enabled, every workflow must have completed.
        """

        def query(connection: sa.Connection) -> list[Any]:
            return list(
                connection.execute(
                    sa.select(
                        workflows.c.id,
                        workflows.c.name,
                        workflows.c.args,
                        workflows.c.status,
                        workflows.c.result,
                        workflows.c.error,
                    ).where(workflows.c.status != WorkflowStatus.RUNNING)
                )
            )

        every = await self.c.read(lambda c: list(c.execute(sa.select(workflows.c.id)).scalars()))
        unasked = set(every) - set(self.workflow_ids)
        assert len(unasked) <= self.unknown_starts, (
            f"workflows nobody started (a start applied twice?): {sorted(unasked)}"
        )
        for row in await self.c.read(query):
            assert "non-determinism" not in (row.error or ""), f"{row.id} ({row.name}): {row.error}"
            if row.status == WorkflowStatus.COMPLETED and row.name in EXPECTED_RESULTS:
                expected = EXPECTED_RESULTS[row.name](json.loads(row.args))
                assert json.loads(row.result) == expected, f"{row.id} ({row.name}) returned {row.result}"
            elif final and not self.families & MAY_FAIL_OR_CANCEL:
                raise AssertionError(f"{row.id} ({row.name}) ended {row.status}: {row.error}")

    async def _orphaned_claims(self) -> dict[int, str]:
        def query(connection: sa.Connection) -> dict[int, str]:
            rows = connection.execute(
                sa.select(tasks.c.id, tasks.c.claimed_by).where(tasks.c.claimed_by.is_not(None))
            )
            return {row.id: row.claimed_by for row in rows}

        claimed = await self.c.read(query)
        return {task: holder for task, holder in claimed.items() if self.c.sessions.get(holder) is None}

    async def _check_results_applied_once(self) -> None:
        def query(connection: sa.Connection) -> list[Any]:
            return list(
                connection.execute(
                    sa.select(steps.c.id, steps.c.result_token, steps.c.executor_id).where(
                        steps.c.status == StepStatus.COMPLETED, steps.c.kind == "task"
                    )
                )
            )

        for row in await self.c.read(query):
            accepted = self.applied.get(row.id)
            if accepted is None and (row.result_token, row.executor_id) in self.maybe_applied.get(row.id, ()):
                accepted = self.applied[row.id] = (row.result_token, row.executor_id)
            assert accepted is not None, f"step {row.id} completed with no result accepted for it"
            assert (row.result_token, row.executor_id) == accepted, (
                f"step {row.id} holds the result of {(row.result_token, row.executor_id)}, but {accepted} "
                "was the one accepted"
            )

    # ----------------------------------------------------------- quiescence

    async def _quiesce(self) -> None:
        """Faults stop; every executor comes back healthy; every workflow must end."""
        assert self.faults is not None
        self.faults.clear()
        deadline = self.loop.time() + QUIESCENCE_TIMEOUT
        while True:
            for executor in self.executors.values():
                await self._connect(executor)
            for session in list(self.c.sessions):
                model = self.executors.get(session.executor_id)
                if model is None or model.session is not session:
                    await lose_lease(self.c, session)  # nobody comes back for it: its lease runs out
            for executor in self.executors.values():
                if executor.session is not None:
                    self.c.executor_alive(executor.session)
                await self._work(executor, CAPACITY)
            if await self._all_terminal():
                break
            if self.loop.time() > deadline:
                stuck = await self._stuck()
                raise AssertionError(
                    f"workflows still running {QUIESCENCE_TIMEOUT}s after faults stopped: {stuck}"
                )
            await asyncio.sleep(0.02)
        await self._check()
        await self._check_outcomes(final=True)

    async def _all_terminal(self) -> bool:
        counts = await self.c.count_workflows("")
        return not counts.get(WorkflowStatus.RUNNING.value)

    async def _stuck(self) -> list[str]:
        def query(connection: sa.Connection) -> list[str]:
            return list(
                connection.execute(
                    sa.select(workflows.c.id).where(workflows.c.status == WorkflowStatus.RUNNING).limit(5)
                ).scalars()
            )

        lines = []
        for workflow_id in await self.c.read(query):
            explanation = await self.c.explain_workflow(workflow_id)
            lines.append(f"{workflow_id} ({explanation.workflow.name}): {explanation.summary}")
        return lines


# ------------------------------------------------------------------- tests


@pytest.fixture
def migrated_url(database_url: str) -> Iterator[str]:
    from conveyor.coordinator.store import Database

    database = Database(database_url)
    database.migrate()
    database.dispose()
    yield database_url


def run_machine(database_url: str, families: frozenset[str], examples: int, steps_per_example: int) -> None:
    CoordinatorMachine.database_url = database_url
    CoordinatorMachine.families = families
    run_state_machine_as_test(
        CoordinatorMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps_per_example,
            deadline=None,
            derandomize=not os.environ.get("CONVEYOR_MODEL_RANDOM"),
            database=None,
            # No "explain" phase: it re-runs the failing example many times over, a minute each here.
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),  # slow by nature; the machine is busy
        ),
    )


def test_the_coordinator_keeps_its_promises(migrated_url: str) -> None:
    """Every workflow ends, nothing is applied twice, the invariants hold, under random interleavings."""
    run_machine(migrated_url, selected_families(), EXAMPLES, STEPS)


def test_every_family_names_what_it_exercises() -> None:
    assert set(DEFAULT_FAMILIES) <= set(FAMILIES)
    assert "core" in DEFAULT_FAMILIES
    for family in STARTS:
        assert family in FAMILIES, family
