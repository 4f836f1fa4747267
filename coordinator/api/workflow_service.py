"""WorkflowService: start, inspect, list and cancel workflows."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import grpc

from conveyor import tracing
from conveyor.errors import InvalidArgument
from conveyor.v1 import workflow_service_pb2 as pb
from conveyor.v1 import workflow_service_pb2_grpc

from .. import protocol
from ..engine import Coordinator
from ..explain import Explanation, Situation, StepExplanation, Wait
from ..store.workflows import Started
from ..watch import WatchEvent, WatchEventKind
from .errors import rpc

_SITUATION_TO_WIRE = {
    Situation.STEPS_IN_PROGRESS: pb.WORKFLOW_SITUATION_STEPS_IN_PROGRESS,
    Situation.REPLAY_QUEUED: pb.WORKFLOW_SITUATION_REPLAY_QUEUED,
    Situation.CODE_NOT_LOADED: pb.WORKFLOW_SITUATION_CODE_NOT_LOADED,
    Situation.STRANDED: pb.WORKFLOW_SITUATION_STRANDED,
    Situation.FINISHED: pb.WORKFLOW_SITUATION_FINISHED,
}

_WAIT_TO_WIRE = {
    Wait.QUEUED: pb.STEP_WAIT_QUEUED,
    Wait.NO_EXECUTOR: pb.STEP_WAIT_NO_EXECUTOR,
    Wait.RUNNING: pb.STEP_WAIT_RUNNING,
    Wait.EXECUTOR_LOST: pb.STEP_WAIT_EXECUTOR_LOST,
    Wait.RETRY_BACKOFF: pb.STEP_WAIT_RETRY_BACKOFF,
    Wait.RATE_LIMITED: pb.STEP_WAIT_RATE_LIMITED,
    Wait.SLEEPING: pb.STEP_WAIT_SLEEPING,
    Wait.SIGNAL: pb.STEP_WAIT_SIGNAL,
    Wait.CHILD: pb.STEP_WAIT_CHILD,
}


def _start_request(request: pb.StartWorkflowRequest) -> tuple[str, str, str]:
    return request.name, request.args_json, request.idempotency_key


async def _start_traced(
    coordinator: Coordinator, requests: Sequence[pb.StartWorkflowRequest], context: grpc.aio.ServicerContext
) -> list[Started]:
    """Start ``requests`` each under a ``StartWorkflow`` server span, child of the caller's trace
    context (the request's own field, else the call's metadata), whose context is stored with the
    workflow for its tasks. Without OpenTelemetry the caller's context is stored as it came."""
    metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
    spans = [
        tracing.start_span(
            "StartWorkflow",
            parent=request.trace_context or metadata,
            kind="server",
            attributes={"conveyor.workflow.name": request.name},
        )
        for request in requests
    ]
    try:
        started = await coordinator.start_workflows(
            [_start_request(r) for r in requests], [tracing.encode(span.carrier()) for span in spans]
        )
    except BaseException as error:
        for span in spans:
            span.fail(f"{type(error).__name__}: {error}")
            span.end()
        raise
    for span, each in zip(spans, started, strict=True):
        span.set_attribute("conveyor.workflow.id", each.workflow_id)
        span.set_attribute("conveyor.workflow.already_existed", each.already_existed)
        span.end()
    return started


class WorkflowService(workflow_service_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    @rpc
    async def StartWorkflow(
        self, request: pb.StartWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartWorkflowResponse:
        (started,) = await _start_traced(self._coordinator, [request], context)
        return pb.StartWorkflowResponse(
            workflow_id=started.workflow_id, already_existed=started.already_existed
        )

    @rpc
    async def StartWorkflows(
        self, request: pb.StartWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartWorkflowsResponse:
        started = await _start_traced(self._coordinator, request.workflows, context)
        return pb.StartWorkflowsResponse(
            workflows=[
                pb.StartWorkflowResponse(workflow_id=s.workflow_id, already_existed=s.already_existed)
                for s in started
            ]
        )

    @rpc
    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetWorkflowResponse:
        record = await self._coordinator.get_workflow(
            request.workflow_id, include_steps=request.include_steps
        )
        return pb.GetWorkflowResponse(workflow=protocol.workflow_to_wire(record))

    @rpc
    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorkflowsResponse:
        statuses = []
        for wire in request.statuses:
            status = protocol.WORKFLOW_STATUS_FROM_WIRE.get(wire)
            if status is None:
                raise InvalidArgument(f"statuses holds {wire}, which is not a workflow status")
            statuses.append(status)
        records, token = await self._coordinator.list_workflows(
            statuses=statuses,
            name=request.name,
            page_size=request.page_size,
            page_token=request.page_token,
            newest_first=request.newest_first,
        )
        return pb.ListWorkflowsResponse(
            workflows=[protocol.workflow_to_wire(r) for r in records], next_page_token=token or ""
        )

    @rpc
    async def CountWorkflows(
        self, request: pb.CountWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountWorkflowsResponse:
        return pb.CountWorkflowsResponse(by_status=await self._coordinator.count_workflows(request.name))

    @rpc
    async def CancelWorkflow(
        self, request: pb.CancelWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelWorkflowResponse:
        record = await self._coordinator.cancel_workflow(request.workflow_id, request.reason)
        return pb.CancelWorkflowResponse(workflow=protocol.workflow_to_wire(record))

    @rpc
    async def WatchWorkflow(
        self, request: pb.WatchWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> None:
        # Closed at once when the caller goes away, so the watcher is forgotten then, not at GC.
        async with contextlib.aclosing(self._coordinator.watch_workflow(request.workflow_id)) as events:
            async for event in events:
                await context.write(_watch_event_to_wire(event))

    @rpc
    async def ExplainWorkflow(
        self, request: pb.ExplainWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainWorkflowResponse:
        return _explanation_to_wire(await self._coordinator.explain_workflow(request.workflow_id))

    @rpc
    async def SignalWorkflow(
        self, request: pb.SignalWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.SignalWorkflowResponse:
        sent = await self._coordinator.signal_workflow(
            request.workflow_id, request.name, request.payload_json, request.idempotency_key
        )
        return pb.SignalWorkflowResponse(delivered=sent.delivered, duplicate=sent.duplicate)


_WATCH_EVENT_TO_WIRE = {
    WatchEventKind.SNAPSHOT: pb.WATCH_EVENT_KIND_SNAPSHOT,
    WatchEventKind.STEP_STARTED: pb.WATCH_EVENT_KIND_STEP_STARTED,
    WatchEventKind.STEP_COMPLETED: pb.WATCH_EVENT_KIND_STEP_COMPLETED,
    WatchEventKind.STEP_FAILED: pb.WATCH_EVENT_KIND_STEP_FAILED,
    WatchEventKind.STEP_CANCELLED: pb.WATCH_EVENT_KIND_STEP_CANCELLED,
    WatchEventKind.WORKFLOW_FINISHED: pb.WATCH_EVENT_KIND_WORKFLOW_FINISHED,
}


def _watch_event_to_wire(event: WatchEvent) -> pb.WatchWorkflowResponse:
    return pb.WatchWorkflowResponse(
        kind=_WATCH_EVENT_TO_WIRE[event.kind],
        workflow=protocol.workflow_to_wire(event.workflow),
        step=None if event.step is None else protocol.step_to_wire(event.step),
    )


def _explanation_to_wire(explanation: Explanation) -> pb.ExplainWorkflowResponse:
    return pb.ExplainWorkflowResponse(
        workflow=protocol.workflow_to_wire(explanation.workflow),
        situation=_SITUATION_TO_WIRE[explanation.situation],
        summary=explanation.summary,
        steps=[_step_explanation_to_wire(step) for step in explanation.steps],
        replay_queue_ahead=explanation.replay_queue_ahead,
        generated_at=protocol.timestamp(explanation.generated_at),
    )


def _step_explanation_to_wire(step: StepExplanation) -> pb.StepExplanation:
    return pb.StepExplanation(
        step_number=step.number,
        step_name=step.name,
        kind=protocol.STEP_KIND_TO_WIRE[step.kind],
        task_kind=step.task_kind,
        wait=_WAIT_TO_WIRE[step.wait],
        explanation=step.text,
        shard=step.shard or 0,
        tasks_ahead=step.tasks_ahead,
        shard_executors=step.shard_executors,
        executor_id=step.executor_id,
        since_last_heartbeat=(
            None if step.since_last_heartbeat is None else protocol.duration(step.since_last_heartbeat)
        ),
        available_at=protocol.timestamp(step.available_at),
        claimed_at=protocol.timestamp(step.claimed_at),
        deadline_at=protocol.timestamp(step.deadline_at),
        attempt=step.attempt,
        max_attempts=step.max_attempts,
        last_error=step.last_error,
    )
