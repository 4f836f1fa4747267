"""Requests that are not valid protobuf get ``INVALID_ARGUMENT``, not gRPC's generic ``UNKNOWN``.

gRPC decodes a unary request before the servicer runs and answers ``UNKNOWN`` when
it cannot; :class:`MalformedRequestInterceptor` decodes it instead and answers
``INVALID_ARGUMENT`` naming the message type. Streamed requests are decoded by
``context.read()`` inside the servicer, where :func:`conveyor.coordinator.api.errors.rpc`
does the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class _Malformed:
    """Stands in for a request that failed to decode."""

    error: str


def malformed_message(error: DecodeError | str) -> str:
    return f"the request is not a valid protobuf message ({error}); build it from protos/conveyor/v1"


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        decode: Callable[[bytes], Any] = handler.request_deserializer
        respond: Callable[..., Awaitable[Any]] = handler.unary_unary

        def tolerant_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except DecodeError as error:
                return _Malformed(str(error))

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed_message(request.error))
            return await respond(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked, request_deserializer=tolerant_decode, response_serializer=handler.response_serializer
        )
