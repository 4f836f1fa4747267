"""Work RPCs reach only the leading coordinator; a standby refuses them and names the leader.

A refused call was not applied: it ends with ``UNAVAILABLE``, a message naming the leader
and the leader's address in the ``conveyor-leader`` trailing metadata, which executors and
clients follow. Health checking and reflection are answered whatever the standing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc

from conveyor.errors import LEADER_METADATA_KEY, NotLeader


class LeaderGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Refuses calls to ``services`` while ``refusal()`` returns an error (None: this one leads)."""

    def __init__(self, services: Collection[str], refusal: Callable[[], NotLeader | None]) -> None:
        self._prefixes = tuple(f"/{name}/" for name in services)
        self._refusal = refusal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefixes):
            return handler
        refusal = self._refusal()
        if refusal is None:
            return handler
        return _refusing(handler, refusal)


def _refusing(handler: grpc.RpcMethodHandler, refusal: NotLeader) -> grpc.RpcMethodHandler:
    # Always there, empty while no leader is known: it tells the caller nothing was applied.
    metadata = ((LEADER_METADATA_KEY, refusal.leader_address or ""),)

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, refusal.message, trailing_metadata=metadata)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAVAILABLE, refusal.message, trailing_metadata=metadata)
        yield  # pragma: no cover - abort raises; this makes the function a generator

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **serializers)
