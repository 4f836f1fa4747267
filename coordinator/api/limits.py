"""A size limit on streamed requests, checked before they are decoded.

``grpc.max_receive_message_length`` bounds every message at ``max_message_bytes``
(64 MiB by default, so that a full result batch fits). A ClaimTasks message never
needs that much: a Hello lists at most its capacity of held task ids, and credits,
heartbeats and the draining notice are tiny. Decoding a 15 MiB Hello of held ids
cost ~400 MiB of Python objects, so messages of streamed calls above
``max_stream_message_bytes`` are refused ``RESOURCE_EXHAUSTED`` before decoding.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from conveyor.errors import ResourceExhausted


class StreamMessageSizeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    def __init__(self, limit: int) -> None:
        self._limit = limit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler.request_streaming or handler.request_deserializer is None:
            return handler
        decode: Callable[[bytes], Any] = handler.request_deserializer
        limit, method = self._limit, handler_call_details.method

        def bounded_decode(data: bytes) -> Any:
            # Raised from context.read() in the servicer, whose @rpc answers it RESOURCE_EXHAUSTED.
            if len(data) > limit:
                raise ResourceExhausted(
                    f"a {method} message of {len(data)} bytes is larger than this coordinator takes on a "
                    f"stream ({limit} bytes, max_stream_message_bytes); a Hello should list only the "
                    "tasks the executor really holds"
                )
            return decode(data)

        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                handler.stream_stream,
                request_deserializer=bounded_decode,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_unary_rpc_method_handler(
            handler.stream_unary,
            request_deserializer=bounded_decode,
            response_serializer=handler.response_serializer,
        )
