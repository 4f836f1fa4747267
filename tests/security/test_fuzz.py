"""Malformed and hostile requests to every RPC: proper statuses, the server keeps serving,
and a refused request changes nothing stored.

Every method of the three services is found from the protos' descriptors (a new RPC
is fuzzed without touching this file). Hypothesis sends each one messages whose
fields hold hostile values (huge, empty, control characters, SQL and path
fragments, extreme numbers, out-of-range timestamps, unknown enum values, too many
repeated entries, control characters in every text field, integers of thousands of
digits and NaN in JSON, page tokens past BIGINT), raw bytes that are not protobuf at
all, and messages whose integer fields carry wire values beyond their type's range;
and bursts of concurrent hostile Hellos past ``max_executors``.
Each answer must be OK or a status that blames the request (INVALID_ARGUMENT,
NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED), never INTERNAL, UNKNOWN or a
hang; and every refusal leaves the workflow-state tables byte-for-byte what they were.

"What they were" is read once the coordinator has settled (nothing in its replay
queue): an accepted call may leave work for the replay loop, which lands whenever the
loop gets to it, and on a busy machine that used to be after the *next* call, which was
then blamed for it (see :func:`test_work_left_by_an_accepted_call_is_not_blamed_on_a_refused_one`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import WorkflowContext, workflow
from conveyor.coordinator.store.schema import workflows
from conveyor.v1 import (
    admin_service_pb2,
    executor_service_pb2,
    executor_service_pb2_grpc,
    workflow_service_pb2,
)
from support import eventually, registry_of
from toolkit import MakeStack, execute, replay_rows, snapshot, task_rows

T = TypeVar("T")

#: OK, or a status that blames the request (never INTERNAL, UNKNOWN, UNAVAILABLE...).
PROPER_STATUSES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,  # an idempotency key reused with other arguments
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
#: Examples per RPC; raise ``$CONVEYOR_FUZZ_EXAMPLES`` for a longer hunt.
EXAMPLES_PER_METHOD = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "25"))
CALL_TIMEOUT = 20.0
#: How long the coordinator may take to finish the work an accepted call left (a busy machine).
SETTLE_TIMEOUT = 120.0

HOSTILE_TEXT = [
    "",
    " ",
    " padded ",
    "\x00",
    "\n\r\t",
    "x" * 201,
    "x" * 5000,
    "'; DROP TABLE workflows; --",
    "../../../../etc/passwd",
    "%s%s%n",
    "null",
    "{}",
    "[]",
    '{"name": "x"}',
    "[" * 3000 + "]" * 3000,
    "\u202egreet",
    "🙂" * 300,
    # Control characters, which no identifier may hold and every terminal or log must escape.
    "\x1b[31mred\x1b[0m",
    "sec-[/]-x",
    "line\nforged log line",
    "\x07\x08\x7f\x85\u2028\u2029\ufeff",
    "YmFzZTY0",
    "research",
    "greet",
    "llm",
]
#: JSON with numbers past what Python converts (4,300 digits) or a double holds.
HOSTILE_JSON = [
    '{"name": ' + "9" * 5000 + "}",
    "[-" + "9" * 5000 + "]",
    '{"name": ' + "9" * 4300 + "}",
    '{"name": ' + str(2**64) + "}",
    '{"name": 1e400}',
    '{"name": -1e-400}',
    "[NaN]",
    '{"name": -Infinity}',
    '{"content": [{"type": "text", "text": ' + "9" * 5000 + "}]}",
]
#: Page tokens carrying numbers at and beyond BIGINT's range.
HOSTILE_PAGE_TOKENS = [
    base64.urlsafe_b64encode(f"v1:{number}".encode()).decode()
    for number in (2**63 - 1, 2**63, -(2**63), -(2**63) - 1, "9" * 5000, "1e400", "-0")
]
INT_EDGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}
#: Field types sent as varints on the wire, where a value beyond the type's range can be written.
VARINT_TYPES = {*INT_EDGES, FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM}
#: Raw varint values past 32 bits, past 63, at 64 and past 64 (which no parser should accept).
WIRE_VALUES_BEYOND = (2**31, 2**32, 2**32 + 7, 2**53 + 1, 2**63, 2**64 - 1, 2**64, 2**70 - 1)
#: Control and format characters (C0, DEL, C1, line/paragraph separators, bidi overrides...).
CONTROL_CHARACTERS = st.characters(categories=("Cc", "Cf", "Zl", "Zp"))


@dataclass(frozen=True)
class Plausible:
    """Values that get a request past its first checks, to reach the deeper ones."""

    texts: tuple[str, ...]
    numbers: tuple[int, ...]


def hostile_text(plausible: Plausible, field: str = "") -> st.SearchStrategy[str]:
    if field.endswith("_json"):
        return st.one_of(st.sampled_from(HOSTILE_JSON), hostile_text(plausible))
    if field.endswith("page_token"):
        return st.one_of(st.sampled_from(HOSTILE_PAGE_TOKENS), hostile_text(plausible))
    return st.one_of(
        st.sampled_from(plausible.texts),
        st.sampled_from(HOSTILE_TEXT),
        st.text(max_size=40).filter(_encodable),
        st.text(alphabet='ab{}[]":,0123456789', min_size=100, max_size=3000),
        # A plausible value with control characters in it, to get past the first checks.
        st.builds(
            lambda text, control, at: text[:at] + control + text[at:],
            st.sampled_from(plausible.texts),
            st.text(CONTROL_CHARACTERS, min_size=1, max_size=4).filter(_encodable),
            st.integers(0, 40),
        ),
    )


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False  # protobuf strings must be valid UTF-8: no client can send these
    return True


def field_values(field: FieldDescriptor, plausible: Plausible, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, plausible, depth + 1)
    if field.type == FieldDescriptor.TYPE_STRING:
        return hostile_text(plausible, field.name)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=200)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)  # proto3 enums are open: unknown numbers arrive too
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    low, high = INT_EDGES.get(field.type, (-(2**31), 2**31 - 1))
    edges = [low, -1, 0, 1, 2, 50, 51, 1001, high, *plausible.numbers]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def messages(descriptor: Descriptor, plausible: Plausible, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor`` with any subset of fields set to hostile values."""
    message_class = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(message_class())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        values = field_values(field, plausible, depth)
        if field.is_repeated:
            many = 60 if depth == 0 else 3  # over the batch limits at the top level
            values = st.one_of(st.lists(values, max_size=3), st.lists(values, min_size=many, max_size=many))
        fields[field.name] = values
    return st.fixed_dictionaries({}, optional=fields).map(lambda chosen: _build(message_class, chosen))


def beyond_range(descriptor: Descriptor, plausible: Plausible) -> st.SearchStrategy[bytes]:
    """A message of ``descriptor`` followed by one more value for one of its integer fields, written
    as a raw varint past the field's range (the last value of a field wins when decoding)."""
    numeric = [field for field in descriptor.fields if field.type in VARINT_TYPES]
    if not numeric:
        return st.nothing()
    return st.builds(
        lambda message, field, value: (
            message.SerializeToString() + _varint(field.number << 3) + _varint(value)
        ),
        messages(descriptor, plausible),
        st.sampled_from(numeric),
        st.sampled_from(WIRE_VALUES_BEYOND),
    )


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            encoded.append(low)
            return bytes(encoded)
        encoded.append(low | 0x80)


def _build(message_class: type[Message], chosen: dict[str, Any]) -> Message:
    message = message_class()
    for name, value in chosen.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.is_repeated:
            getattr(message, name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def unary_methods() -> list[MethodDescriptor]:
    services = [
        module.DESCRIPTOR.services_by_name[name]
        for module, name in (
            (workflow_service_pb2, "WorkflowService"),
            (executor_service_pb2, "ExecutorService"),
            (admin_service_pb2, "AdminService"),
        )
    ]
    return [
        method
        for service in services
        for method in service.methods
        if not method.client_streaming and not method.server_streaming
    ]


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


@workflow
async def greet(ctx: WorkflowContext, name: str) -> str:
    answer = await ctx.task("nobody-serves-this", {"name": name})
    return f"hello {answer}"


async def test_hostile_requests_to_every_rpc_get_proper_statuses_and_change_nothing(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(registry_of(greet))
    running = await stack.client.start_workflow("greet", {"name": "ada"})
    [task] = await eventually(lambda: task_rows(stack.database_url, running.workflow_id))
    plausible = Plausible(texts=("fuzz-executor", running.workflow_id, "greet"), numbers=(task.id,))
    loop = asyncio.get_running_loop()

    def on_the_loop(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def stored() -> Any:
        return on_the_loop(snapshot(stack.database_url))

    def settled() -> Any:
        return on_the_loop(settled_snapshot(stack.database_url))

    def fuzz() -> list[str]:
        """Runs in a thread, with a blocking channel, while the server serves on the test's loop."""
        problems: list[str] = []
        with grpc.insecure_channel(stack.server.address) as channel:
            for method in unary_methods():
                problems += fuzz_method(channel, method, plausible, Probe(settled, stored))
            problems += fuzz_claim_stream(channel, plausible)
        return problems

    problems = await asyncio.to_thread(fuzz)
    assert problems == []
    # Still serving: healthy, and answering ordinary calls.
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await stack.client.get_workflow(running.workflow_id)).id == running.workflow_id


async def settled_snapshot(url: str) -> Any:
    """The stored state once the work left by earlier calls is done: the replay queue is empty.

    Replays are the only work an accepted call leaves behind in these tests (no executor
    holds a task, no workflow sleeps), and a workflow leaves the queue in the same
    transaction as its replay's writes, so an empty queue means nothing more will change
    by itself.
    """
    await eventually(lambda: _empty(replay_rows(url)), timeout=SETTLE_TIMEOUT)
    return await snapshot(url)


async def _empty(rows: Coroutine[Any, Any, list[Any]]) -> bool:
    return not await rows


@dataclass(frozen=True)
class Probe:
    """Sends one request and says what, if anything, was wrong with the answer."""

    #: The stored state after the coordinator settled (blocking; see :func:`settled_snapshot`).
    settled: Callable[[], Any]
    #: The stored state now (blocking).
    stored: Callable[[], Any]

    def check(self, name: str, call: Callable[[], tuple[grpc.StatusCode, str]], shown: str) -> str | None:
        before = self.settled()
        code, details = call()
        if code not in PROPER_STATUSES:
            return f"{name} answered {code.name} ({details[:200]}) to {shown}"
        if code != grpc.StatusCode.OK and self.stored() != before:
            return f"{name} refused {shown} ({code.name}) but changed stored data"
        return None


def fuzz_method(
    channel: grpc.Channel, method: MethodDescriptor, plausible: Plausible, probe: Probe
) -> list[str]:
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    as_message = channel.unary_unary(
        path_of(method),
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    as_bytes = channel.unary_unary(path_of(method))
    problems: list[str] = []

    @settings(
        max_examples=EXAMPLES_PER_METHOD,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        request=st.one_of(
            messages(method.input_type, plausible),
            beyond_range(method.input_type, plausible),
            st.binary(min_size=1, max_size=300),
        )
    )
    def send(request: Message | bytes) -> None:
        def call() -> tuple[grpc.StatusCode, str]:
            try:
                (as_bytes if isinstance(request, bytes) else as_message)(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as error:
                return error.code(), error.details() or ""
            return grpc.StatusCode.OK, ""

        problem = probe.check(path_of(method), call, _show(request))
        if problem is not None:
            problems.append(problem)

    send()
    return problems


def fuzz_claim_stream(channel: grpc.Channel, plausible: Plausible) -> list[str]:
    """Sequences of hostile ClaimTasks messages, the first of which should be a Hello."""
    method = executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"].methods_by_name["ClaimTasks"]
    stream = channel.stream_stream(
        path_of(method),
        request_serializer=executor_service_pb2.ClaimTasksRequest.SerializeToString,
        response_deserializer=executor_service_pb2.ClaimTasksResponse.FromString,
    )
    problems: list[str] = []

    @settings(
        max_examples=EXAMPLES_PER_METHOD,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(sequence=st.lists(messages(method.input_type, plausible), min_size=1, max_size=4))
    def send(sequence: list[Message]) -> None:
        responses = stream(iter(sequence), timeout=2.0)
        try:
            for _ in responses:
                pass
        except grpc.RpcError as error:
            # A stream that was welcomed stays open until our deadline: that is fine.
            if error.code() not in PROPER_STATUSES | {grpc.StatusCode.DEADLINE_EXCEEDED}:
                problems.append(f"ClaimTasks answered {error.code().name} ({error.details()}) to {sequence}")

    send()
    return problems


# ------------------------------------------------------- concurrent Hellos past the limit

HELLO_LIMIT = 3


async def test_concurrent_hostile_hellos_past_max_executors_never_exceed_it(make_stack: MakeStack) -> None:
    """Bursts of Hellos (hostile fields, many with an id that passes) race ``max_executors``
    together: at most the limit are ever welcomed, every other answer is a proper refusal,
    and once the welcomed ones hang up and their leases lapse a new executor gets in."""
    stack = await make_stack(
        registry_of(greet), max_executors=HELLO_LIMIT, max_streams_per_connection=64, lease_ttl=1.0
    )
    ids = st.one_of(
        st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=20),
        hostile_text(Plausible(texts=("fuzz-executor",), numbers=(1,))),
    )
    hellos = st.builds(
        lambda executor_id, kinds, capacity: executor_service_pb2.ClaimTasksRequest(
            hello=executor_service_pb2.Hello(executor_id=executor_id, task_kinds=kinds, capacity=capacity)
        ),
        ids,
        st.lists(st.sampled_from(["llm", "nobody-serves-this", "x" * 300]), min_size=1, max_size=3),
        st.sampled_from([1, 50, 0, -1, 2**31 - 1]),
    )
    bursts = st.lists(hellos, min_size=HELLO_LIMIT + 1, max_size=HELLO_LIMIT + 12)
    problems: list[str] = []
    loop = asyncio.get_running_loop()

    async def burst(requests: list[Message]) -> None:
        async with grpc.aio.insecure_channel(stack.server.address) as channel:
            stub = executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"]
            claim = channel.stream_stream(
                path_of(stub.methods_by_name["ClaimTasks"]),
                request_serializer=executor_service_pb2.ClaimTasksRequest.SerializeToString,
                response_deserializer=executor_service_pb2.ClaimTasksResponse.FromString,
            )
            calls = [claim() for _ in requests]
            await asyncio.gather(
                *(call.write(request) for call, request in zip(calls, requests, strict=True))
            )
            answers = await asyncio.gather(*(_first_answer(call) for call in calls))
            registered = len(stack.coordinator.sessions)
            if registered > HELLO_LIMIT:
                problems.append(f"{registered} executor sessions against max_executors={HELLO_LIMIT}")
            # A Hello for an id already connected replaces that session: count ids, not answers.
            welcomed = {r.hello.executor_id for r, a in zip(requests, answers, strict=True) if a == "welcome"}
            if len(welcomed) > HELLO_LIMIT:
                problems.append(f"{sorted(welcomed)} welcomed against max_executors={HELLO_LIMIT}")
            wrong = [a for a in answers if a != "welcome" and a not in {c.name for c in PROPER_STATUSES}]
            if wrong:
                problems.append(f"answers {sorted(set(wrong))} to {[_show(r) for r in requests]}")
            for call in calls:
                call.cancel()
        # Hung up: the sessions disconnect, and are forgotten once their leases lapse.
        await eventually(lambda: len(stack.coordinator.sessions) == 0, timeout=60)

    @settings(
        max_examples=max(5, EXAMPLES_PER_METHOD // 3),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests=bursts)
    def send(requests: list[Message]) -> None:
        asyncio.run_coroutine_threadsafe(burst(requests), loop).result(timeout=120)

    await asyncio.to_thread(send)
    assert problems == []
    # A new executor is still welcomed: nothing the bursts left holds a slot.
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        call = executor_service_pb2_grpc.ExecutorServiceStub(channel).ClaimTasks()
        await call.write(
            executor_service_pb2.ClaimTasksRequest(
                hello=executor_service_pb2.Hello(
                    executor_id="after-the-bursts", task_kinds=["llm"], capacity=1
                )
            )
        )
        assert await _first_answer(call) == "welcome"
        call.cancel()


async def _first_answer(call: Any) -> str:
    """``welcome`` (or the first message's kind), or the status the stream ended with."""
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            return str((await call.read()).WhichOneof("message"))
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)


def _show(request: Message | bytes) -> str:
    text = repr(request) if isinstance(request, bytes) else str(request).replace("\n", " ")
    return text[:300]


# ------------------------------------------------------------- the probe itself


async def test_work_left_by_an_accepted_call_is_not_blamed_on_a_refused_one(make_stack: MakeStack) -> None:
    """The fuzz test once failed on a busy machine with "FailPendingTasks refused ... but changed
    stored data": an earlier FailPendingTasks had been accepted, and the replay it queued landed
    between the refused call's two snapshots. Here every replay is slow (as on a busy machine)
    and refused calls keep coming until the replay has landed: the probe blames none of them."""
    stack = await make_stack(registry_of(greet))
    running = await stack.client.start_workflow("greet", {"name": "ada"})
    await eventually(lambda: task_rows(stack.database_url, running.workflow_id))
    replays = stack.coordinator.replays
    apply = replays.apply

    def slow_apply(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)  # a busy machine: the replay's write lands late (no assertion on time)
        return apply(*args, **kwargs)

    replays.apply = slow_apply  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    probe = Probe(
        settled=lambda: asyncio.run_coroutine_threadsafe(settled_snapshot(stack.database_url), loop).result(),
        stored=lambda: asyncio.run_coroutine_threadsafe(snapshot(stack.database_url), loop).result(),
    )
    fail_pending = (
        f"/{admin_service_pb2.DESCRIPTOR.services_by_name['AdminService'].full_name}/FailPendingTasks"
    )

    def run() -> list[str | None]:
        with grpc.insecure_channel(stack.server.address) as channel:
            stub = channel.unary_unary(
                fail_pending,
                request_serializer=admin_service_pb2.FailPendingTasksRequest.SerializeToString,
                response_deserializer=admin_service_pb2.FailPendingTasksResponse.FromString,
            )

            def call(request: admin_service_pb2.FailPendingTasksRequest) -> tuple[grpc.StatusCode, str]:
                try:
                    stub(request, timeout=CALL_TIMEOUT)
                except grpc.RpcError as error:
                    return error.code(), error.details() or ""
                return grpc.StatusCode.OK, ""

            everything = admin_service_pb2.FailPendingTasksRequest(shards={"all_shards": True})
            refused = admin_service_pb2.FailPendingTasksRequest(shards={"all_shards": True}, limit=-1)
            verdicts = [probe.check("FailPendingTasks", lambda: call(everything), "all")]
            landed = False
            while not landed:  # refusals until one comes after the replay the accepted call queued
                landed = not asyncio.run_coroutine_threadsafe(replay_rows(stack.database_url), loop).result()
                verdicts.append(probe.check("FailPendingTasks", lambda: call(refused), "limit=-1"))
            return verdicts

    verdicts = await asyncio.to_thread(run)
    assert set(verdicts) == {None}
    assert (await stack.client.wait(running.workflow_id, timeout=60, poll_interval=0.05)).error


async def test_a_refused_call_that_changed_stored_data_is_reported(make_stack: MakeStack) -> None:
    """The other half of being right about it: a real partial write is caught."""
    stack = await make_stack(registry_of(greet))
    running = await stack.client.start_workflow("greet", {"name": "ada"})
    await eventually(lambda: task_rows(stack.database_url, running.workflow_id))
    loop = asyncio.get_running_loop()

    def on_the_loop(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    probe = Probe(
        settled=lambda: on_the_loop(settled_snapshot(stack.database_url)),
        stored=lambda: on_the_loop(snapshot(stack.database_url)),
    )

    def partial_write() -> tuple[grpc.StatusCode, str]:
        on_the_loop(
            execute(stack.database_url, sa.update(workflows).values(idempotency_key="written by a refusal"))
        )
        return grpc.StatusCode.INVALID_ARGUMENT, "refused"

    problem = await asyncio.to_thread(probe.check, "Partial", partial_write, "request")
    assert problem == "Partial refused request (INVALID_ARGUMENT) but changed stored data"
