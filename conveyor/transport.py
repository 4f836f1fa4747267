"""How clients and executors reach the coordinator: TLS, mutual TLS and a bearer token.

Every process that dials the coordinator (the Python client, the CLI, executors)
builds its channel with :func:`open_channel`, so all of them accept the same
options and send credentials the same way:

* ``--tls`` encrypts the connection, trusting the system's root certificates, or
  the CA in ``--tls-ca FILE`` (which implies ``--tls``);
* ``--tls-cert FILE --tls-key FILE`` add a client certificate, for a coordinator
  that requires mutual TLS;
* the bearer token is read from ``--token-file FILE``, else from the file named by
  ``$CONVEYOR_TOKEN_FILE``, else from ``$CONVEYOR_TOKEN``. Never from a command-line
  value: anyone on the host can read other processes' arguments (``ps``).

Each flag is also read from its ``CONVEYOR_*`` variable (``$CONVEYOR_COORDINATOR``,
``$CONVEYOR_TLS``, ``$CONVEYOR_TLS_CA``...; :data:`CLIENT_OPTIONS`, :mod:`conveyor.settings`),
which is how :meth:`AsyncClient.from_env` finds the coordinator.

The token travels as ``authorization: Bearer <token>`` metadata on every call. It
is added by a channel interceptor rather than gRPC call credentials because call
credentials are only sent over TLS, and a loopback coordinator may run without it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from .errors import ConfigurationError
from .settings import Kind, Option, Options, Resolved

TOKEN_ENV = "CONVEYOR_TOKEN"
TOKEN_FILE_ENV = "CONVEYOR_TOKEN_FILE"
AUTHORIZATION_HEADER = "authorization"
BEARER_PREFIX = "Bearer "

ChannelOptions = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class ChannelSecurity:
    """What a channel to the coordinator presents; the default is plaintext without a token."""

    #: Sent as a bearer token on every call; kept out of ``repr`` so it never reaches a log.
    token: str | None = field(default=None, repr=False)
    tls: bool = False
    #: PEM file of the CA that signed the coordinator's certificate (default: system roots).
    ca_file: Path | None = None
    #: PEM files of this process's certificate and key, for mutual TLS.
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigurationError("a client certificate needs both --tls-cert and --tls-key")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ConfigurationError("--tls-ca, --tls-cert and --tls-key only apply with TLS (--tls)")


#: Where the coordinator listens: the client commands' and executors' ``--coordinator``.
COORDINATOR_ADDRESS = Option(
    "coordinator",
    Kind.TEXT,
    "127.0.0.1:50051",
    "coordinator address; several, comma-separated, for a leader and its standbys (the leader is "
    "found and followed)",
    metavar="HOST:PORT[,HOST:PORT...]",
)
_SECURITY = "connection security"
#: How a channel to the coordinator is secured; every process that dials it takes these.
CONNECTION_OPTIONS = Options(
    Option(
        "token_file",
        Kind.PATH,
        None,
        f"file holding the bearer token (else ${TOKEN_ENV})",
        metavar="FILE",
        field=None,
        group=_SECURITY,
    ),
    Option(
        "token",
        Kind.TEXT,
        None,
        "the bearer token itself; a token file is safer (other users may read a process's environment)",
        flag=None,
        field=None,
        secret=True,
        in_file=False,
        group=_SECURITY,
    ),
    Option(
        "tls",
        Kind.BOOL,
        False,
        "connect with TLS (implied by --tls-ca/--tls-cert)",
        field=None,
        group=_SECURITY,
    ),
    Option(
        "tls_ca",
        Kind.PATH,
        None,
        "PEM CA certificate to trust",
        metavar="FILE",
        default_text="system roots",
        field=None,
        group=_SECURITY,
    ),
    Option(
        "tls_cert",
        Kind.PATH,
        None,
        "PEM client certificate, for mutual TLS",
        metavar="FILE",
        field=None,
        group=_SECURITY,
    ),
    Option("tls_key", Kind.PATH, None, "PEM key of --tls-cert", metavar="FILE", field=None, group=_SECURITY),
)
#: The options of the client commands and of :meth:`AsyncClient.from_env`.
CLIENT_OPTIONS = Options(COORDINATOR_ADDRESS) + CONNECTION_OPTIONS
_ADDRESS_ONLY = Options(COORDINATOR_ADDRESS)


def read_token(token_file: Path | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token from ``token_file``, else ``$CONVEYOR_TOKEN_FILE``, else ``$CONVEYOR_TOKEN``."""
    environ = os.environ if environ is None else environ
    path = token_file or (Path(environ[TOKEN_FILE_ENV]) if environ.get(TOKEN_FILE_ENV) else None)
    if path is not None:
        token = _read_text(path, "token file").strip()
        if not token:
            raise ConfigurationError(f"the token file {path} is empty")
        return token
    return environ.get(TOKEN_ENV, "").strip() or None


def add_arguments(parser: argparse.ArgumentParser, *, address: bool = False) -> None:
    """The connection flags shared by every command that dials the coordinator; with ``address``,
    ``--coordinator`` too."""
    (CLIENT_OPTIONS if address else CONNECTION_OPTIONS).add_arguments(parser, config_file=False)


def security_from_values(resolved: Resolved, environ: Mapping[str, str] | None = None) -> ChannelSecurity:
    """The :class:`ChannelSecurity` that resolved :data:`CONNECTION_OPTIONS` describe.

    The token comes from the token file (a flag's, ``$CONVEYOR_TOKEN_FILE``'s, a config file's),
    else ``$CONVEYOR_TOKEN``; but ``$CONVEYOR_TOKEN`` beats a config file's token file, as every
    variable beats the file.
    """
    token_file: Path | None = resolved["token_file"]
    source = resolved.sources["token_file"]
    if resolved["token"] and source not in ("default", TOKEN_FILE_ENV) and not source.startswith("--"):
        token_file = None  # a config file's token file: $CONVEYOR_TOKEN beats it
    if token_file is not None:
        token = read_token(token_file, {})
    else:
        token = (resolved["token"] or "").strip() or None
    tls_ca, tls_cert = resolved["tls_ca"], resolved["tls_cert"]
    return ChannelSecurity(
        token=token,
        tls=bool(resolved["tls"] or tls_ca or tls_cert),
        ca_file=tls_ca,
        cert_file=tls_cert,
        key_file=resolved["tls_key"],
    )


def security_from_arguments(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ChannelSecurity:
    """The :class:`ChannelSecurity` that the flags of :func:`add_arguments` and the environment describe."""
    return security_from_values(CONNECTION_OPTIONS.resolve(args, environ, files=False), environ)


def coordinator_address(args: argparse.Namespace | None, environ: Mapping[str, str] | None = None) -> str:
    """The coordinator's address: ``--coordinator``, else ``$CONVEYOR_COORDINATOR``, else the default."""
    return str(_ADDRESS_ONLY.resolve(args, environ, files=False)["coordinator"])


def connection_from_arguments(
    args: argparse.Namespace | None, environ: Mapping[str, str] | None = None
) -> tuple[str, ChannelSecurity]:
    """The coordinator's address and the channel's security: flags (``args``, if any), else
    ``$CONVEYOR_COORDINATOR``, ``$CONVEYOR_TOKEN_FILE``, ``$CONVEYOR_TLS``... else the defaults."""
    resolved = CLIENT_OPTIONS.resolve(args, environ, files=False)
    return resolved["coordinator"], security_from_values(resolved, environ)


def open_channel(
    target: str, security: ChannelSecurity | None = None, *, options: ChannelOptions = ()
) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` with ``security`` applied."""
    security = security or ChannelSecurity()
    interceptors = _bearer_token_interceptors(security.token) if security.token else None
    if not security.tls:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem(security.ca_file, "CA certificate"),
        private_key=_read_pem(security.key_file, "client key"),
        certificate_chain=_read_pem(security.cert_file, "client certificate"),
    )
    return grpc.aio.secure_channel(target, credentials, options=list(options), interceptors=interceptors)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as error:
        raise ConfigurationError(f"cannot read the {what} {path}: {error.strerror or error}") from None


def _read_pem(path: Path | None, what: str) -> bytes | None:
    return None if path is None else _read_text(path, what).encode()


def _bearer_token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding ``authorization: Bearer <token>`` to every call of a channel.

    A channel files each interceptor under the first call shape it implements, so
    each shape needs an interceptor object of its own.
    """
    header = (AUTHORIZATION_HEADER, BEARER_PREFIX + token)
    return [shape(header) for shape in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


class _AddsHeader:
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    def _with_header(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return details._replace(metadata=metadata)


# grpc ships no type information, so mypy sees each interceptor base class as Any.
class _UnaryUnary(_AddsHeader, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_header(client_call_details), request)


class _UnaryStream(_AddsHeader, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_header(client_call_details), request)


class _StreamUnary(_AddsHeader, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any],
    ) -> Any:
        return await continuation(self._with_header(client_call_details), request_iterator)


class _StreamStream(_AddsHeader, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any],
    ) -> Any:
        return await continuation(self._with_header(client_call_details), request_iterator)
