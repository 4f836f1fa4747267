"""``Client.wait`` against a coordinator from before WatchWorkflow (UNIMPLEMENTED): it polls."""

from __future__ import annotations

from typing import Any

import grpc

from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from conveyor.v1 import common_pb2, workflow_service_pb2, workflow_service_pb2_grpc


class OlderCoordinator(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """Answers GetWorkflow only (running twice, then completed); every other RPC is UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.polls = 0

    async def GetWorkflow(self, request: Any, context: Any) -> workflow_service_pb2.GetWorkflowResponse:
        self.polls += 1
        status = (
            common_pb2.WORKFLOW_STATUS_COMPLETED if self.polls > 2 else common_pb2.WORKFLOW_STATUS_RUNNING
        )
        return workflow_service_pb2.GetWorkflowResponse(
            workflow=workflow_service_pb2.Workflow(id=request.workflow_id, name="old", status=status)
        )


async def test_wait_falls_back_to_polling_an_older_coordinator() -> None:
    server = grpc.aio.server()
    older = OlderCoordinator()
    workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(older, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            finished = await client.wait("w-1", timeout=30, poll_interval=0.01)
    finally:
        await server.stop(None)
    assert (finished.id, finished.status) == ("w-1", WorkflowStatus.COMPLETED)
    assert older.polls == 3
