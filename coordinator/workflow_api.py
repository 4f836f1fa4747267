"""What clients do with workflows (WorkflowService): start, read, list, count, cancel, explain."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Collection, Sequence

from conveyor.errors import InvalidArgument

from . import explain, validation
from .clock import now_us
from .context import EngineContext
from .model import WorkflowStatus
from .sessions import SessionState
from .store import SignalSent, Started, StartRequest, WorkflowRecord, Workflows, deadlines, inspection

log = logging.getLogger(__name__)


class WorkflowApi:
    """Validates each request, then runs it against the store."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    async def start_workflows(
        self, requests: Sequence[tuple[str, str, str]], trace_contexts: Sequence[str | None] = ()
    ) -> list[Started]:
        """Start workflows given as (name, args_json, idempotency_key); all or none. ``trace_contexts``:
        each one's stored W3C Trace Context (conveyor.tracing.encode), in the same order."""
        if not requests:
            raise InvalidArgument("no workflows to start")
        if len(requests) > self.ctx.config.max_start_batch:
            raise InvalidArgument(
                f"{len(requests)} workflows in one call; the limit is {self.ctx.config.max_start_batch}"
            )
        starts = []
        for index, (name, args_json, key) in enumerate(requests):
            try:
                _definition, canonical_args = validation.workflow_start(
                    self.ctx.registry, name, args_json, self.ctx.config.max_payload_bytes
                )
                validation.identifier(key, "idempotency_key", required=False)
            except InvalidArgument as error:
                if len(requests) == 1:
                    raise
                raise InvalidArgument(f"workflow #{index}: {error.message}") from None
            trace = trace_contexts[index] if index < len(trace_contexts) else None
            starts.append(StartRequest(name, canonical_args, key or None, trace))
        started = await self.ctx.write(functools.partial(self.ctx.workflows.start, requests=starts), "start")
        self.ctx.stats.workflows_started += sum(1 for s in started if not s.already_existed)
        return started

    async def get_workflow(self, workflow_id: str, *, include_steps: bool) -> WorkflowRecord:
        validation.identifier(workflow_id, "workflow_id")
        return await self.ctx.read(
            functools.partial(self.ctx.workflows.get, workflow_id=workflow_id, include_steps=include_steps)
        )

    async def list_workflows(
        self,
        *,
        statuses: Collection[WorkflowStatus],
        name: str,
        page_size: int,
        page_token: str,
        newest_first: bool,
    ) -> tuple[list[WorkflowRecord], str | None]:
        if page_size < 0 or page_size > 1000:
            raise InvalidArgument(
                f"page_size must be between 1 and 1000 (0 for the default 100), not {page_size}"
            )
        validation.identifier(name, "name", required=False)
        return await self.ctx.read(
            functools.partial(
                self.ctx.workflows.list,
                statuses=statuses,
                name=name or None,
                page_size=page_size or 100,
                page_token=page_token or None,
                newest_first=newest_first,
            )
        )

    async def count_workflows(self, name: str) -> dict[str, int]:
        validation.identifier(name, "name", required=False)
        return await self.ctx.read(functools.partial(Workflows.count_by_status, name=name or None))

    async def cancel_workflow(self, workflow_id: str, reason: str) -> WorkflowRecord:
        validation.identifier(workflow_id, "workflow_id")
        validation.reason(reason)
        record = await self.ctx.write_revoking(
            functools.partial(
                self.ctx.workflows.cancel,
                workflow_id=workflow_id,
                reason=reason or "cancelled by a client",
                now=now_us(),
            ),
            "cancel",
            f"workflow {workflow_id} was cancelled",
            functools.partial(deadlines.claimed_tasks, workflow_id=workflow_id),
        )
        # Its watchers and cached run (and its descendants') are seen to by EngineContext.write.
        self.ctx.count_finished(WorkflowStatus.CANCELLED, 1)
        return record

    async def signal_workflow(
        self, workflow_id: str, name: str, payload_json: str, idempotency_key: str
    ) -> SignalSent:
        """Send a signal; the next ``ctx.wait_for_signal(name)`` of the workflow gets its payload."""
        validation.identifier(workflow_id, "workflow_id")
        validation.signal_name(name)
        validation.identifier(idempotency_key, "idempotency_key", required=False)
        payload = validation.json_value(
            payload_json or "null", "payload_json", self.ctx.config.max_payload_bytes
        )
        sent = await self.ctx.write(
            functools.partial(
                self.ctx.signals.send,
                workflow_id=workflow_id,
                name=name,
                payload_json=payload,
                idempotency_key=idempotency_key or None,
                now=now_us(),
            ),
            "signal",
        )
        return sent

    async def explain_workflow(self, workflow_id: str) -> explain.Explanation:
        """Why the workflow is where it is (see :mod:`conveyor.coordinator.explain`)."""
        validation.identifier(workflow_id, "workflow_id")
        now = now_us()
        facts = await self.ctx.read(
            functools.partial(
                inspection.workflow_facts,
                workflows=self.ctx.workflows,
                workflow_id=workflow_id,
                now=now,
                claim_order=self.ctx.config.claim_order,
            ),
            snapshot=True,
        )
        return explain.explain(
            facts, self.executor_presences(), self.ctx.registry.names(), now, self.ctx.config.lease_ttl
        )

    def executor_presences(self) -> list[explain.ExecutorPresence]:
        """Every executor session as it stands now, sorted by id."""
        monotonic_now = time.monotonic()
        return [
            explain.ExecutorPresence(
                executor_id=session.executor_id,
                live=session.state is SessionState.LIVE and session.epoch == self.ctx.epoch,
                connected=session.state is not SessionState.DISCONNECTED,
                task_kinds=session.task_kinds,
                shards=session.shards,
                seconds_since_heartbeat=monotonic_now - session.last_seen,
            )
            for session in sorted(self.ctx.sessions, key=lambda s: s.executor_id)
        ]
