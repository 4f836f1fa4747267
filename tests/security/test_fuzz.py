"""Malformed and hostile requests to every RPC: proper statuses, the server keeps serving,
and a refused request changes nothing stored.

Every method of the three services is found from the protos' descriptors (a new RPC
is fuzzed without touching this file). Hypothesis sends each one messages whose
fields hold hostile values (huge, empty, control characters, SQL and path
fragments, extreme numbers, out-of-range timestamps, unknown enum values, too many
repeated entries) and raw bytes that are not protobuf at all. Each answer must be
OK or a status that blames the request (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED), never INTERNAL, UNKNOWN or a hang; and
after every refusal the workflow-state tables are byte-for-byte what they were.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import WorkflowContext, workflow
from conveyor.v1 import admin_service_pb2, executor_service_pb2, workflow_service_pb2
from support import eventually, registry_of
from toolkit import MakeStack, snapshot, task_rows

T = TypeVar("T")

#: OK, or a status that blames the request (never INTERNAL, UNKNOWN, UNAVAILABLE...).
PROPER_STATUSES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
#: Examples per RPC; raise ``$CONVEYOR_FUZZ_EXAMPLES`` for a longer hunt.
EXAMPLES_PER_METHOD = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "25"))
CALL_TIMEOUT = 20.0

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
    "YmFzZTY0",
    "research",
    "greet",
    "llm",
]
INT_EDGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


@dataclass(frozen=True)
class Plausible:
    """Values that get a request past its first checks, to reach the deeper ones."""

    texts: tuple[str, ...]
    numbers: tuple[int, ...]


def hostile_text(plausible: Plausible) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(plausible.texts),
        st.sampled_from(HOSTILE_TEXT),
        st.text(max_size=40).filter(_encodable),
        st.text(alphabet='ab{}[]":,0123456789', min_size=100, max_size=3000),
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
        return hostile_text(plausible)
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
    plausible = Plausible(texts=("fuzz-executor", running.workflow_id), numbers=(task.id,))
    loop = asyncio.get_running_loop()

    def on_the_loop(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def stored() -> Any:
        return on_the_loop(snapshot(stack.database_url))

    def fuzz() -> list[str]:
        """Runs in a thread, with a blocking channel, while the server serves on the test's loop."""
        problems: list[str] = []
        with grpc.insecure_channel(stack.server.address) as channel:
            for method in unary_methods():
                problems += fuzz_method(channel, method, plausible, stored)
            problems += fuzz_claim_stream(channel, plausible)
        return problems

    problems = await asyncio.to_thread(fuzz)
    assert problems == []
    # Still serving: healthy, and answering ordinary calls.
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await stack.client.get_workflow(running.workflow_id)).id == running.workflow_id


def fuzz_method(
    channel: grpc.Channel, method: MethodDescriptor, plausible: Plausible, take_snapshot: Callable[[], Any]
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
    state = {"stored": take_snapshot()}

    @settings(
        max_examples=EXAMPLES_PER_METHOD,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=st.one_of(messages(method.input_type, plausible), st.binary(min_size=1, max_size=300)))
    def send(request: Message | bytes) -> None:
        call = as_bytes if isinstance(request, bytes) else as_message
        try:
            call(request, timeout=CALL_TIMEOUT)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        now = take_snapshot()
        if code not in PROPER_STATUSES:
            problems.append(f"{path_of(method)} answered {code.name} ({details[:200]}) to {_show(request)}")
        elif code != grpc.StatusCode.OK and now != state["stored"]:
            problems.append(
                f"{path_of(method)} refused {_show(request)} ({code.name}) but changed stored data"
            )
        state["stored"] = now

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


def _show(request: Message | bytes) -> str:
    text = repr(request) if isinstance(request, bytes) else str(request).replace("\n", " ")
    return text[:300]
