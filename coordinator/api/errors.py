"""One place that turns exceptions into gRPC statuses.

:class:`~conveyor.errors.RpcError` subclasses carry their own status code and a
message meant for the caller. Anything else is a bug: it is logged with its
traceback and answered ``INTERNAL`` without leaking internals to the caller.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from conveyor.errors import LEADER_METADATA_KEY, NotLeader, RpcError

from .decoding import malformed_message

log = logging.getLogger(__name__)

#: gRPC peers may drop status messages longer than about 7 KiB.
MAX_STATUS_MESSAGE = 4000

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def rpc(method: F) -> F:
    """Decorate a servicer method so errors reach the caller as proper statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except RpcError as error:
            if isinstance(error, NotLeader):  # refused, nothing applied: clients follow the leader
                context.set_trailing_metadata(((LEADER_METADATA_KEY, error.leader_address or ""),))
            await context.abort(error.code, error.message[:MAX_STATUS_MESSAGE])
        except DecodeError as error:  # a streamed message that is not protobuf (see .decoding)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed_message(error))
        except Exception as error:
            log.exception("%s failed", method.__qualname__)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error in {method.__name__} ({type(error).__name__}); "
                "the coordinator log has the details",
            )

    return wrapper  # type: ignore[return-value]
