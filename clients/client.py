"""The Python client: every RPC of the three services, with Conveyor's own error types.

::

    async with AsyncClient("127.0.0.1:50051") as client:
        started = await client.start_workflow("research", {"topic": "tides"})
        workflow = await client.wait(started.workflow_id)
        print(workflow.status, workflow.result)

Failed calls raise :class:`~conveyor.errors.RpcError` subclasses
(``NotFound``, ``InvalidArgument``, ``Unavailable``...), never raw ``grpc`` errors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc

from conveyor import tracing
from conveyor.backoff import Backoff, BackoffPolicy
from conveyor.endpoints import CoordinatorEndpoints, refused_by_standby
from conveyor.errors import DeadlineExceeded, RpcError
from conveyor.transport import COORDINATOR_ADDRESS, ChannelSecurity, connection_from_arguments
from conveyor.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    common_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

from .models import BulkCancel, Explanation, Purge, SignalSent, Started, WatchEvent, Workflow, WorkflowStatus

T = TypeVar("T")

DEFAULT_TARGET: str = COORDINATOR_ADDRESS.default
#: Between tries of a call refused by a standby or not delivered, moving towards the leader.
LEADER_FOLLOW_BACKOFF = BackoffPolicy(initial=0.1, maximum=2.0, jitter=0.5)


def _not_applied(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call certainly did nothing: refused by a standby (it names the leader),
    or never delivered (no connection). Anything else may have been applied."""
    if refused_by_standby(error):
        return True
    details = error.details() or ""
    return error.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details or "Connection refused" in details
    )


def _encode_args(args: Any) -> str:
    if args is None:
        return ""
    if isinstance(args, str):
        return args
    return json.dumps(args)


def shard_selector(shard: int | None) -> common_pb2.ShardSelector:
    """One shard, or every shard for ``None``."""
    return (
        common_pb2.ShardSelector(all_shards=True) if shard is None else common_pb2.ShardSelector(shard=shard)
    )


class AsyncClient:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 30.0,
        channel: grpc.aio.Channel | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        security: ChannelSecurity | None = None,
    ) -> None:
        """``target``: the coordinator's address, or several comma-separated (a leader and its
        standbys: calls go to the leader, and follow it when another takes over).
        ``security``: TLS and bearer token (:mod:`conveyor.transport`); default plaintext, no token."""
        #: The addresses and the channel to the leader; None with a caller's own ``channel``.
        self._endpoints: CoordinatorEndpoints | None = None
        if channel is None:
            self._endpoints = CoordinatorEndpoints(
                target,
                security,
                options=[
                    ("grpc.max_receive_message_length", max_message_bytes),
                    ("grpc.max_send_message_length", max_message_bytes),
                ],
            )
            channel = self._endpoints.channel
        self.timeout = timeout
        self._bind(channel)

    def _bind(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._workflows = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(channel)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AsyncClient:
        """A client configured as the ``conveyor`` client commands are, from the environment
        (``environ``, default ``os.environ``): the address from ``$CONVEYOR_COORDINATOR``, the token
        from ``$CONVEYOR_TOKEN_FILE`` or ``$CONVEYOR_TOKEN``, TLS from ``$CONVEYOR_TLS``,
        ``$CONVEYOR_TLS_CA``, ``$CONVEYOR_TLS_CERT``, ``$CONVEYOR_TLS_KEY``; unset ones take their
        defaults (``127.0.0.1:50051``, no token, plaintext). ``options``: as for the constructor
        (``timeout``...). A bad value raises :class:`~conveyor.errors.ConfigurationError`."""
        target, security = connection_from_arguments(None, environ)
        return cls(target, security=security, **options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._endpoints is not None:
            await self._endpoints.close()

    async def _call(
        self, rpc: Callable[..., Awaitable[T]], request: object, metadata: Sequence[tuple[str, str]] = ()
    ) -> T:
        """Call ``rpc``; a call that certainly was not applied (a standby refused it, naming the
        leader; no coordinator could be reached) is sent again to the leader or the next address."""
        moves = Backoff(LEADER_FOLLOW_BACKOFF, deadline=self.timeout)
        while True:
            channel = self._channel
            try:
                if metadata:
                    return await rpc(request, timeout=self.timeout, metadata=tuple(metadata))
                return await rpc(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as error:
                delay = None
                if self._endpoints is not None and _not_applied(error):
                    moved = self._endpoints.follow(error, channel) or self._endpoints.channel is not channel
                    # Refused by a standby or a leader still recovering: try again, there or at
                    # the leader; undelivered: only if there is another address to try.
                    if moved or refused_by_standby(error):
                        delay = moves.next_delay()
                if delay is None:
                    raise RpcError.from_status(error.code(), error.details() or "") from None
            rpc = self._rebound(rpc)
            await asyncio.sleep(delay)

    def _rebound(self, rpc: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """The same method of the stubs of the channel the endpoints moved to."""
        assert self._endpoints is not None
        old_stubs = (self._workflows, self._admin)
        self._bind(self._endpoints.channel)
        for old, new in zip(old_stubs, (self._workflows, self._admin), strict=True):
            for name, method in vars(old).items():
                if method is rpc:
                    rebound: Callable[..., Awaitable[T]] = getattr(new, name)
                    return rebound
        return rpc

    # ---------------------------------------------------------------- workflows

    async def start_workflow(self, name: str, args: Any = None, *, idempotency_key: str = "") -> Started:
        """Start ``name`` with ``args`` (a dict of keyword arguments, a list, or JSON text).

        With OpenTelemetry, the call is a ``StartWorkflow`` client span under the current one, and
        the workflow's steps run in its trace (:mod:`conveyor.tracing`)."""
        attributes = {"conveyor.workflow.name": name}
        with tracing.span("StartWorkflow", kind="client", attributes=attributes) as span:
            carrier = tracing.current_carrier()
            response = await self._call(
                self._workflows.StartWorkflow,
                workflow_service_pb2.StartWorkflowRequest(
                    name=name,
                    args_json=_encode_args(args),
                    idempotency_key=idempotency_key,
                    trace_context=carrier,
                ),
                list(carrier.items()),
            )
            span.set_attribute("conveyor.workflow.id", response.workflow_id)
        return Started(response.workflow_id, response.already_existed)

    async def start_workflows(
        self, starts: Iterable[tuple[str, Any] | tuple[str, Any, str]]
    ) -> list[Started]:
        """Start many workflows in one transaction; FIFO order is the order given. With OpenTelemetry,
        all of them run in the trace of one ``StartWorkflows`` client span."""
        with tracing.span("StartWorkflows", kind="client"):
            carrier = tracing.current_carrier()
            requests = [
                workflow_service_pb2.StartWorkflowRequest(
                    name=start[0],
                    args_json=_encode_args(start[1]),
                    idempotency_key=start[2] if len(start) > 2 else "",
                    trace_context=carrier,
                )
                for start in starts
            ]
            response = await self._call(
                self._workflows.StartWorkflows,
                workflow_service_pb2.StartWorkflowsRequest(workflows=requests),
                list(carrier.items()),
            )
        return [Started(r.workflow_id, r.already_existed) for r in response.workflows]

    async def get_workflow(self, workflow_id: str, *, include_steps: bool = False) -> Workflow:
        response = await self._call(
            self._workflows.GetWorkflow,
            workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id, include_steps=include_steps),
        )
        return Workflow.from_wire(response.workflow)

    async def list_workflows_page(
        self,
        *,
        statuses: Sequence[WorkflowStatus] = (),
        name: str = "",
        page_size: int = 100,
        page_token: str = "",
        newest_first: bool = False,
    ) -> tuple[list[Workflow], str]:
        response = await self._call(
            self._workflows.ListWorkflows,
            workflow_service_pb2.ListWorkflowsRequest(
                statuses=[s.to_wire() for s in statuses],
                name=name,
                page_size=page_size,
                page_token=page_token,
                newest_first=newest_first,
            ),
        )
        return [Workflow.from_wire(w) for w in response.workflows], response.next_page_token

    async def list_workflows(
        self,
        *,
        statuses: Sequence[WorkflowStatus] = (),
        name: str = "",
        page_size: int = 500,
        newest_first: bool = False,
    ) -> AsyncIterator[Workflow]:
        """Every matching workflow, fetched a page at a time."""
        token = ""
        while True:
            page, token = await self.list_workflows_page(
                statuses=statuses, name=name, page_size=page_size, page_token=token, newest_first=newest_first
            )
            for workflow in page:
                yield workflow
            if not token:
                return

    async def count_workflows(self, name: str = "") -> dict[WorkflowStatus, int]:
        """Workflows per status (every status present, zero included)."""
        response = await self._call(
            self._workflows.CountWorkflows, workflow_service_pb2.CountWorkflowsRequest(name=name)
        )
        return {status: response.by_status.get(status.value, 0) for status in WorkflowStatus}

    async def cancel_workflow(self, workflow_id: str, reason: str = "") -> Workflow:
        response = await self._call(
            self._workflows.CancelWorkflow,
            workflow_service_pb2.CancelWorkflowRequest(workflow_id=workflow_id, reason=reason),
        )
        return Workflow.from_wire(response.workflow)

    async def signal_workflow(
        self, workflow_id: str, name: str, payload: Any = None, *, idempotency_key: str = ""
    ) -> SignalSent:
        """Send signal ``name`` with a JSON ``payload``: the workflow's next
        ``ctx.wait_for_signal(name)`` returns it (buffered until then). With ``idempotency_key``,
        a retried call stores the signal once."""
        response = await self._call(
            self._workflows.SignalWorkflow,
            workflow_service_pb2.SignalWorkflowRequest(
                workflow_id=workflow_id,
                name=name,
                payload_json=json.dumps(payload),
                idempotency_key=idempotency_key,
            ),
        )
        return SignalSent(workflow_id, name, response.delivered, response.duplicate)

    async def explain_workflow(self, workflow_id: str) -> Explanation:
        """Why the workflow is where it is: a summary in words, and what each running step waits for."""
        response = await self._call(
            self._workflows.ExplainWorkflow,
            workflow_service_pb2.ExplainWorkflowRequest(workflow_id=workflow_id),
        )
        return Explanation.from_wire(response)

    async def watch_workflow(
        self, workflow_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Follow the workflow (``WatchWorkflow``): its snapshot first, then each step's change, and
        last ``workflow_finished``; the stream then ends. One stream, no retries: after a coordinator
        restart (:class:`~conveyor.errors.Unavailable`) watch again (``wait`` does)."""
        call = self._workflows.WatchWorkflow(
            workflow_service_pb2.WatchWorkflowRequest(workflow_id=workflow_id), timeout=timeout
        )
        try:
            async for message in call:
                yield WatchEvent.from_wire(message)
        except grpc.aio.AioRpcError as error:
            raise RpcError.from_status(error.code(), error.details() or "") from None
        finally:
            call.cancel()

    async def wait(
        self, workflow_id: str, *, timeout: float | None = None, poll_interval: float = 0.2
    ) -> Workflow:
        """Wait until the workflow finishes and return it (:class:`~conveyor.errors.DeadlineExceeded`
        after ``timeout`` seconds).

        The coordinator pushes the finish over a ``WatchWorkflow`` stream; when the stream breaks
        (a coordinator restart) the wait watches again, for as long as the coordinator stays
        unreachable up to the client's call ``timeout``. Against a coordinator without
        ``WatchWorkflow`` it polls ``GetWorkflow`` every ``poll_interval`` seconds instead."""
        try:
            async with asyncio.timeout(timeout):
                finished = await self._watch_until_finished(workflow_id)
                if finished is not None:
                    return finished
        except TimeoutError:
            raise DeadlineExceeded(f"workflow {workflow_id} still running after {timeout}s") from None
        return await self._poll_until_finished(workflow_id, timeout, poll_interval)

    async def _watch_until_finished(self, workflow_id: str) -> Workflow | None:
        """The finished workflow, watched; None if the coordinator cannot watch (an older one)."""
        # Jittered, so that the watchers of a restarted coordinator do not all come back at once.
        reconnects = Backoff(BackoffPolicy(0.05, 2.0, multiplier=2.0, jitter=0.5), deadline=self.timeout)
        while True:
            channel = self._channel
            call = self._workflows.WatchWorkflow(
                workflow_service_pb2.WatchWorkflowRequest(workflow_id=workflow_id)
            )
            try:
                async for message in call:
                    reconnects.reset()
                    workflow = Workflow.from_wire(message.workflow)
                    if workflow.status.finished:
                        return workflow
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return None
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise RpcError.from_status(error.code(), error.details() or "") from None
                if self._endpoints is not None:
                    # A standby refused the watch, or the leader went away: watch at the leader
                    # (the standby names it) or at the next address, as unary calls do.
                    self._endpoints.follow(error, channel)
                    if self._endpoints.channel is not channel:
                        self._bind(self._endpoints.channel)
                delay = reconnects.next_delay()
                if delay is None:
                    raise RpcError.from_status(error.code(), error.details() or "") from None
                await asyncio.sleep(delay)
            finally:
                call.cancel()

    async def _poll_until_finished(
        self, workflow_id: str, timeout: float | None, poll_interval: float
    ) -> Workflow:
        """Poll until the workflow finishes; the interval grows to 2 s for long waits."""
        # Jittered, so that many clients waiting on one coordinator do not poll in step.
        polls = Backoff(
            # A poll interval of 0 (or less) means "as often as sensible", not an error.
            BackoffPolicy(max(poll_interval, 0.01), max(poll_interval, 2.0), multiplier=1.5, jitter=0.5),
            deadline=timeout,
        )
        while True:
            workflow = await self.get_workflow(workflow_id)
            if workflow.status.finished:
                return workflow
            interval = polls.next_delay()
            if interval is None:
                raise DeadlineExceeded(f"workflow {workflow_id} still running after {timeout}s")
            await asyncio.sleep(interval)

    # -------------------------------------------------------------------- admin

    async def fail_pending_tasks(self, shard: int | None, *, limit: int = 0, reason: str = "") -> int:
        response = await self._call(
            self._admin.FailPendingTasks,
            admin_service_pb2.FailPendingTasksRequest(
                shards=shard_selector(shard), limit=limit, reason=reason
            ),
        )
        return int(response.failed_tasks)

    async def bump_epoch(self, reason: str = "") -> admin_service_pb2.BumpEpochResponse:
        return await self._call(self._admin.BumpEpoch, admin_service_pb2.BumpEpochRequest(reason=reason))

    async def clear_replay_queue(
        self, shard: int | None, *, limit: int = 0, reason: str = ""
    ) -> admin_service_pb2.ClearReplayQueueResponse:
        return await self._call(
            self._admin.ClearReplayQueue,
            admin_service_pb2.ClearReplayQueueRequest(
                shards=shard_selector(shard), limit=limit, reason=reason
            ),
        )

    async def clear_task_queue(
        self, shard: int | None, *, limit: int = 0, reason: str = ""
    ) -> admin_service_pb2.ClearTaskQueueResponse:
        return await self._call(
            self._admin.ClearTaskQueue,
            admin_service_pb2.ClearTaskQueueRequest(shards=shard_selector(shard), limit=limit, reason=reason),
        )

    async def cancel_workflows(
        self,
        shard: int | None,
        *,
        name: str = "",
        started_before: datetime | None = None,
        started_after: datetime | None = None,
        limit: int = 0,
        dry_run: bool = False,
        reason: str = "",
    ) -> BulkCancel:
        """Cancel, oldest first, the running workflows of ``shard`` (``None``: every shard) that
        match ``name`` and the start-time bounds; ``dry_run`` only counts them."""
        request = admin_service_pb2.CancelWorkflowsRequest(
            shards=shard_selector(shard), name=name, limit=limit, dry_run=dry_run, reason=reason
        )
        if started_before is not None:
            request.started_before.FromDatetime(started_before)
        if started_after is not None:
            request.started_after.FromDatetime(started_after)
        return BulkCancel.from_wire(await self._call(self._admin.CancelWorkflows, request))

    async def purge_workflows(
        self,
        finished_before: datetime,
        *,
        statuses: Sequence[WorkflowStatus] = (),
        limit: int = 0,
        dry_run: bool = False,
    ) -> Purge:
        """Delete the finished workflows (of ``statuses``; empty: completed, failed and cancelled)
        that finished before ``finished_before``, with their journals, oldest first; ``dry_run``
        only counts them. Running workflows are never purged."""
        request = admin_service_pb2.PurgeWorkflowsRequest(
            statuses=[s.to_wire() for s in statuses], limit=limit, dry_run=dry_run
        )
        request.finished_before.FromDatetime(finished_before)
        return Purge.from_wire(await self._call(self._admin.PurgeWorkflows, request))

    async def diagnose(self, *, max_violations: int = 20) -> admin_service_pb2.DiagnoseResponse:
        return await self._call(
            self._admin.Diagnose, admin_service_pb2.DiagnoseRequest(max_violations=max_violations)
        )
