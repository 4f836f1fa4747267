"""The coordinator's port: TLS, optional mutual TLS, and where it may listen unprotected.

* ``--tls-cert`` / ``--tls-key`` serve TLS; ``--tls-client-ca`` additionally requires
  every client to present a certificate signed by that CA (mutual TLS).
* A coordinator reachable from other hosts without authentication would let anyone
  on the network start workflows, read every result and run admin actions, so it
  refuses to listen on a non-loopback address without ``--auth-tokens-file`` unless
  told ``--insecure`` (for networks that are trusted, or protected some other way).
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from conveyor.errors import ConfigurationError
from conveyor.monitoring import is_loopback

log = logging.getLogger(__name__)


def server_credentials(
    cert_file: Path, key_file: Path, client_ca_file: Path | None
) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with ``client_ca_file``, clients must show a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(_read(key_file, "--tls-key"), _read(cert_file, "--tls-cert"))],
        root_certificates=None if client_ca_file is None else _read(client_ca_file, "--tls-client-ca"),
        require_client_auth=client_ca_file is not None,
    )


def check_exposure(listen: str, *, authenticated: bool, tls: bool, insecure: bool) -> None:
    """Refuse an unauthenticated non-loopback listen address unless ``insecure``; warn about weaker setups."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if is_loopback(host):
        return
    if not authenticated:
        if not insecure:
            raise ConfigurationError(
                f"refusing to listen on {listen} without authentication: anyone who can reach it could "
                "start workflows, read their results and run admin actions. Give --auth-tokens-file FILE "
                "(with --tls-cert/--tls-key so tokens are not sent in clear), listen on 127.0.0.1, or pass "
                "--insecure if this network is trusted"
            )
        log.warning("listening on %s without authentication (--insecure): any caller is trusted", listen)
    elif not tls:
        log.warning(
            "listening on %s without TLS: bearer tokens cross the network in clear; add --tls-cert/--tls-key",
            listen,
        )


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read {flag} {path}: {error.strerror}") from None
