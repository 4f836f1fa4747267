"""Several coordinator addresses, and following the leader among them.

With standby coordinators (PostgreSQL), ``--coordinator`` takes several comma-separated
addresses (``a:50051,b:50051``); a DNS name that resolves to several hosts works too,
as gRPC's resolver spreads the calls of one channel over them. One of them leads. A
standby refuses work with ``UNAVAILABLE`` and names the leader in the ``conveyor-leader``
trailing metadata; :class:`CoordinatorEndpoints` then moves its channel there. A call that
fails without a hint (the coordinator is down, stalled or unreachable) moves it to the next
address. Callers retry with their own jittered backoff, so a failover costs them a few
attempts, not their work.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from .errors import LEADER_METADATA_KEY, ConfigurationError
from .transport import ChannelOptions, ChannelSecurity, open_channel

log = logging.getLogger(__name__)

#: How long a channel left behind keeps serving the calls still on it.
RETIRED_CHANNEL_GRACE = 30.0
#: Status codes after which the next address is tried (the coordinator may be gone or stalled).
_MOVE_ON = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def parse_addresses(target: str) -> list[str]:
    """``"a:1, b:2"`` -> ``["a:1", "b:2"]`` (order kept, duplicates dropped)."""
    addresses = list(dict.fromkeys(part.strip() for part in target.split(",") if part.strip()))
    if not addresses:
        raise ConfigurationError(
            f"no coordinator address in {target!r}; give HOST:PORT, or several separated by commas"
        )
    return addresses


def refused_by_standby(error: grpc.aio.AioRpcError) -> bool:
    """Whether a coordinator that does not lead refused the call (so it did nothing); it then
    names the leader in ``conveyor-leader``, empty while it knows of none."""
    return any(key == LEADER_METADATA_KEY for key, _value in tuple(error.trailing_metadata() or ()))


def leader_hint(error: grpc.aio.AioRpcError) -> str | None:
    """The leader's address a refusing standby named, if any."""
    for key, value in tuple(error.trailing_metadata() or ()):
        if key == LEADER_METADATA_KEY and value:
            return str(value)
    return None


class CoordinatorEndpoints:
    """A channel to the coordinator that leads, among ``target``'s addresses."""

    def __init__(
        self, target: str, security: ChannelSecurity | None = None, *, options: ChannelOptions = ()
    ) -> None:
        self.addresses = parse_addresses(target)
        self._security = security
        self._options = options
        self.current = self.addresses[0]
        self.channel: grpc.aio.Channel = open_channel(self.current, security, options=options)
        #: How many times the channel moved (for logs and tests).
        self.moves = 0
        self._retiring: set[asyncio.Task[None]] = set()

    def follow(self, error: grpc.aio.AioRpcError, channel: grpc.aio.Channel | None = None) -> bool:
        """After a call on ``channel`` (default: the current one) failed: move to the leader it
        named, or, for an unreachable coordinator, to the next address. True if the channel
        moved. A failure on a channel already left behind moves nothing: another call followed."""
        if channel is not None and channel is not self.channel:
            return False
        hint = leader_hint(error)
        if hint is not None:
            if hint == self.current:
                return False
            if hint not in self.addresses:
                self.addresses.append(hint)
            target = hint
        elif error.code() in _MOVE_ON and len(self.addresses) > 1:
            target = self.addresses[(self.addresses.index(self.current) + 1) % len(self.addresses)]
        else:
            return False
        log.info(
            "coordinator %s: %s; moving to %s",
            self.current,
            "it is a standby" if hint is not None else error.code().name,
            target,
        )
        self._move(target)
        return True

    def _move(self, target: str) -> None:
        old = self.channel
        self.current = target
        self.channel = open_channel(target, self._security, options=self._options)
        self.moves += 1
        # Calls still running on the old channel finish there (or fail and follow in turn).
        task = asyncio.get_running_loop().create_task(old.close(grace=RETIRED_CHANNEL_GRACE))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        await self.channel.close()
        for task in list(self._retiring):
            task.cancel()
