"""Who may call what: bearer tokens, three roles, and the server interceptor that checks them.

Each service belongs to a role, and a call must carry a token of that role:

==========================  ==========  ==================================================
service                     role        who
==========================  ==========  ==================================================
``WorkflowService``         client      applications starting and reading workflows
``ExecutorService``         executor    executors (a token may be bound to one executor id)
``AdminService``, any other admin       operators (reflection included)
``grpc.health.v1.Health``   (none)      load balancers and orchestrators hold no token
metrics, status page (HTTP) monitoring  Prometheus and dashboards (admin tokens work too)
==========================  ==========  ==================================================

No token, or one the coordinator does not know, is ``UNAUTHENTICATED``; a known
token of another role is ``PERMISSION_DENIED``. Tokens are compared in constant
time (:func:`hmac.compare_digest` over SHA-256 digests, every entry every time),
so response timing reveals nothing about them.

The token file (``--auth-tokens-file``) has one token per line::

    # ROLES            TOKEN                              [EXECUTOR-ID]
    client             4f9c0e6b7d2a41c8b3e5a9f1d6c2b7e0
    executor           a1b2c3d4e5f60718293a4b5c6d7e8f90   gpu-box-1
    admin,client       0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f6

ROLES is one role or several joined by commas. An executor token with an
EXECUTOR-ID may only connect and report results as that executor, and that
executor id is reserved for it: no other token (an unbound executor token
included) may connect or report as it. So a stolen or misconfigured executor
token cannot touch a bound executor's tasks. Unbound executor tokens are trusted
alike (any of them may act as any executor id not bound to a token); production
configurations should give every executor its own bound token, and the coordinator
warns at start-up when a file holds an unbound one (see docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc

from conveyor.errors import ConfigurationError, PermissionDenied
from conveyor.transport import AUTHORIZATION_HEADER, BEARER_PREFIX

log = logging.getLogger(__name__)


class Role(StrEnum):
    CLIENT = "client"
    EXECUTOR = "executor"
    ADMIN = "admin"
    #: Reads the metrics endpoint and the status page (:mod:`conveyor.monitoring`); no gRPC service.
    MONITORING = "monitoring"


#: The role each service requires; a service not listed here requires ADMIN.
SERVICE_ROLES: dict[str, Role] = {
    "conveyor.v1.WorkflowService": Role.CLIENT,
    "conveyor.v1.ExecutorService": Role.EXECUTOR,
}
#: Services anyone may call: health checks carry no secrets and are polled by machines without tokens.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})
#: Shorter tokens are refused at start-up: they can be guessed.
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Principal:
    """The holder of one token."""

    roles: frozenset[Role]
    #: Where the token was defined, for logs (never the token itself).
    label: str
    #: For executor tokens bound to one executor: the only executor id the holder may use.
    executor_id: str | None = None


class TokenTable:
    """The tokens a coordinator accepts, each mapped to its :class:`Principal`."""

    def __init__(self, tokens: Sequence[tuple[str, Principal]]) -> None:
        self._entries = [(_digest(token), principal) for token, principal in tokens]
        if len({digest for digest, _ in self._entries}) != len(self._entries):
            raise ConfigurationError("the same token is listed twice; give each holder its own token")
        #: Executor ids some token is bound to: reserved for that token alone.
        self.bound_executor_ids = frozenset(
            principal.executor_id for _, principal in self._entries if principal.executor_id is not None
        )

    @classmethod
    def from_file(cls, path: Path) -> TokenTable:
        try:
            text = path.read_text()
        except OSError as error:
            raise ConfigurationError(f"cannot read the auth tokens file {path}: {error.strerror}") from None
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users; restrict it with: chmod 600 %s", path, path)
        table = cls(_parse(text, str(path)))
        if not table._entries:
            raise ConfigurationError(f"{path} lists no tokens; every call would be refused")
        for _, principal in table._entries:
            if Role.EXECUTOR in principal.roles and principal.executor_id is None:
                log.warning(
                    "the %s is not bound to an executor id: its holder may act as any executor not bound "
                    "to a token of its own; in production give each executor its own token with its id "
                    "as the third field",
                    principal.label,
                )
        return table

    def authenticate(self, token: str) -> Principal | None:
        """The principal holding ``token``, or None; takes the same time whichever entry matches."""
        presented = _digest(token)
        found = None
        for digest, principal in self._entries:
            if hmac.compare_digest(digest, presented):
                found = principal
        return found

    def may_monitor(self, token: str) -> bool:
        """Whether ``token`` may read the metrics and the status page: the monitoring or admin role."""
        principal = self.authenticate(token)
        return principal is not None and bool(principal.roles & {Role.MONITORING, Role.ADMIN})

    def principal_of(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal | None:
        """The principal of a call, from its ``authorization: Bearer`` metadata."""
        token = bearer_token(metadata)
        return None if token is None else self.authenticate(token)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION_HEADER and isinstance(value, str) and value.startswith(BEARER_PREFIX):
            return value[len(BEARER_PREFIX) :]
    return None


def require_executor_identity(
    principal: Principal | None, executor_id: str, bound_executor_ids: frozenset[str] = frozenset()
) -> None:
    """Refuse a bound executor token acting as another executor, and any other token acting
    as an executor id that is bound to a token (``bound_executor_ids``)."""
    if principal is None:
        return
    if principal.executor_id not in (None, executor_id):
        raise PermissionDenied(
            f"this token belongs to executor {principal.executor_id!r} and cannot act as executor "
            f"{executor_id!r}; start the executor with --executor-id {principal.executor_id} or give it "
            "its own token"
        )
    if principal.executor_id is None and executor_id in bound_executor_ids:
        raise PermissionDenied(
            f"executor id {executor_id!r} is bound to its own token in the coordinator's tokens file; "
            "only that token may act as it (start this executor with another --executor-id, or with "
            "that executor's token)"
        )


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Checks every call's token against the role of the service it calls."""

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        service = method.lstrip("/").split("/", 1)[0]
        handler = await continuation(handler_call_details)
        if service in OPEN_SERVICES:
            return handler
        metadata = handler_call_details.invocation_metadata
        token = bearer_token(metadata)
        if token is None:
            return _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "this coordinator requires a bearer token ('authorization: Bearer <token>' metadata); "
                "conveyor commands read it from --token-file or $CONVEYOR_TOKEN",
            )
        principal = self._tokens.authenticate(token)
        if principal is None:
            return _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "the bearer token is not one this coordinator accepts (see its --auth-tokens-file)",
            )
        required = SERVICE_ROLES.get(service, Role.ADMIN)
        if required not in principal.roles:
            held = ",".join(sorted(principal.roles))
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs a token of the {required} role; this one has the {held} role",
            )
        if required is Role.ADMIN:
            log.info("admin call %s by the %s", method, principal.label)
        return handler


def _refusal(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers ``code`` without reading the request.

    Requests stay undecoded (no deserializer): a refused caller gets no parsing done for it.
    """

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    streaming_in = handler is not None and handler.request_streaming
    streaming_out = handler is not None and handler.response_streaming
    if streaming_in and streaming_out:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if streaming_in:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if streaming_out:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of the token's length.
    return hashlib.sha256(token.encode()).digest()


def _parse(text: str, source: str) -> list[tuple[str, Principal]]:
    tokens = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}, line {number}"
        fields = line.split()
        if len(fields) not in (2, 3):
            raise ConfigurationError(
                f"{where}: expected 'ROLES TOKEN [EXECUTOR-ID]', found {len(fields)} fields"
            )
        try:
            roles = frozenset(Role(role) for role in fields[0].split(","))
        except ValueError:
            raise ConfigurationError(
                f"{where}: unknown role in {fields[0]!r}; roles are client, executor, admin and monitoring"
            ) from None
        token = fields[1]
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigurationError(
                f"{where}: the token is {len(token)} characters; use at least {MIN_TOKEN_LENGTH} random ones "
                '(e.g. python -c "import secrets; print(secrets.token_hex(16))")'
            )
        executor_id = fields[2] if len(fields) == 3 else None
        if executor_id is not None and Role.EXECUTOR not in roles:
            raise ConfigurationError(f"{where}: only executor tokens can be bound to an executor id")
        label = f"{'+'.join(sorted(roles))} token of {where}"
        tokens.append((token, Principal(roles, label, executor_id)))
    return tokens
