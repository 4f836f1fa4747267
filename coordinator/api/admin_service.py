"""AdminService: operator actions and diagnosis."""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration

from conveyor.errors import InvalidArgument
from conveyor.v1 import admin_service_pb2 as pb
from conveyor.v1 import admin_service_pb2_grpc, common_pb2

from .. import protocol, validation
from ..engine import Coordinator
from ..reports import DiagnoseReport
from ..store import WorkflowSelection
from .errors import rpc


def _shards(selector: common_pb2.ShardSelector) -> list[int] | None:
    """The shards selected, or None for all of them."""
    target = selector.WhichOneof("target")
    if target == "shard":
        return [selector.shard]
    if target == "all_shards" and selector.all_shards:
        return None
    raise InvalidArgument("choose the shards to act on: a shard number, or all_shards=true")


def _time_bound(request: pb.CancelWorkflowsRequest, field: str) -> int | None:
    """An optional Timestamp field in microseconds; None when unset."""
    return protocol.from_timestamp(getattr(request, field), field) if request.HasField(field) else None


def _limit(limit: int) -> int:
    if limit < 0:
        raise InvalidArgument(f"limit must not be negative (0 means no limit), not {limit}")
    return limit


class AdminService(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    @rpc
    async def FailPendingTasks(
        self, request: pb.FailPendingTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.FailPendingTasksResponse:
        failed = await self._coordinator.fail_pending_tasks(
            _shards(request.shards), _limit(request.limit), request.reason
        )
        return pb.FailPendingTasksResponse(failed_tasks=failed)

    @rpc
    async def BumpEpoch(
        self, request: pb.BumpEpochRequest, context: grpc.aio.ServicerContext
    ) -> pb.BumpEpochResponse:
        epoch, draining = await self._coordinator.bump_epoch(request.reason)
        return pb.BumpEpochResponse(epoch=epoch, draining_executors=draining)

    @rpc
    async def ClearReplayQueue(
        self, request: pb.ClearReplayQueueRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearReplayQueueResponse:
        cleared, cancelled = await self._coordinator.clear_replay_queue(
            _shards(request.shards), _limit(request.limit), request.reason
        )
        return pb.ClearReplayQueueResponse(cleared_entries=cleared, cancelled_workflows=cancelled)

    @rpc
    async def ClearTaskQueue(
        self, request: pb.ClearTaskQueueRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearTaskQueueResponse:
        cleared, cancelled = await self._coordinator.clear_task_queue(
            _shards(request.shards), _limit(request.limit), request.reason
        )
        return pb.ClearTaskQueueResponse(cleared_tasks=cleared, cancelled_workflows=cancelled)

    @rpc
    async def Diagnose(
        self, request: pb.DiagnoseRequest, context: grpc.aio.ServicerContext
    ) -> pb.DiagnoseResponse:
        if request.max_violations < 0:
            raise InvalidArgument("max_violations must not be negative")
        return _diagnosis_to_wire(await self._coordinator.diagnose(request.max_violations))

    @rpc
    async def CancelWorkflows(
        self, request: pb.CancelWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelWorkflowsResponse:
        selection = WorkflowSelection(
            shards=_shards(request.shards),
            name=validation.identifier(request.name, "name", required=False) or None,
            started_before=_time_bound(request, "started_before"),
            started_after=_time_bound(request, "started_after"),
        )
        matched, cancelled, sample = await self._coordinator.cancel_workflows(
            selection, _limit(request.limit), request.dry_run, request.reason
        )
        return pb.CancelWorkflowsResponse(matched=matched, cancelled=cancelled, sample_workflow_ids=sample)

    @rpc
    async def PurgeWorkflows(
        self, request: pb.PurgeWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PurgeWorkflowsResponse:
        if not request.HasField("finished_before"):
            raise InvalidArgument(
                "finished_before is required: purge the workflows that finished before which time?"
            )
        statuses = []
        for wire in request.statuses:
            status = protocol.WORKFLOW_STATUS_FROM_WIRE.get(wire)
            if status is None:
                raise InvalidArgument(f"statuses holds {wire}, which is not a workflow status")
            statuses.append(status)
        outcome = await self._coordinator.purge_workflows(
            # The Unix epoch itself reads as unset: nothing finished before it either way.
            protocol.from_timestamp(request.finished_before, "finished_before") or 0,
            statuses,
            _limit(request.limit),
            request.dry_run,
        )
        return pb.PurgeWorkflowsResponse(
            matched=outcome.matched, purged=outcome.purged, sample_workflow_ids=outcome.sample
        )


def _diagnosis_to_wire(report: DiagnoseReport) -> pb.DiagnoseResponse:
    def age(created_at: int | None) -> Duration | None:
        return (
            None if created_at is None else protocol.duration(max(0, report.generated_at - created_at) / 1e6)
        )

    leaseholders = {
        shard: view.session.executor_id for view in report.executors for shard in view.session.shards
    }
    return pb.DiagnoseResponse(
        epoch=report.epoch,
        shard_count=report.shard_count,
        shards=[
            pb.ShardStats(
                shard=depth.shard,
                queued_tasks=depth.queued,
                delayed_tasks=depth.delayed,
                claimed_tasks=depth.claimed,
                oldest_queued_age=age(depth.oldest_queued_created_at),
                replay_queue_depth=depth.replay_depth,
                executor_id=leaseholders.get(depth.shard, ""),
            )
            for depth in report.shards
        ],
        replay_queue_depth=report.replay_queue_depth,
        executors=[
            pb.ExecutorInfo(
                executor_id=view.session.executor_id,
                epoch=view.session.epoch,
                state=view.session.state.value,
                shards=sorted(view.session.shards),
                task_kinds=sorted(view.session.task_kinds),
                capacity=view.session.capacity,
                claimed_tasks=view.claimed_tasks,
                since_last_heartbeat=protocol.duration(view.seconds_since_heartbeat),
                connected_at=protocol.timestamp(view.session.connected_at_us),
            )
            for view in report.executors
        ],
        violations=[
            pb.InvariantViolation(
                kind=v.kind, description=v.description, count=v.count, workflow_ids=v.workflow_ids
            )
            for v in report.violations
        ],
        workflows_by_status=report.workflows_by_status,
        rejected_stale_results=report.rejected_stale_results,
        generated_at=protocol.timestamp(report.generated_at),
    )
