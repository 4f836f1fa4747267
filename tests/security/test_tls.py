"""TLS on the gRPC port, and mutual TLS, with certificates made by the test itself."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from conveyor import WorkflowContext, workflow
from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import CoordinatorServer
from conveyor.errors import ConfigurationError, Unavailable
from conveyor.transport import ChannelSecurity
from security.certificates import CertificateAuthority
from security.tokens import Tokens
from support import registry_of
from toolkit import MakeStack


@workflow
async def shout(ctx: WorkflowContext, word: str) -> str:
    answer = await ctx.llm(model="m", max_tokens=20, messages=[{"role": "user", "content": word.upper()}])
    return answer.text


REGISTRY = registry_of(shout)


async def counts_through(address: str, security: ChannelSecurity) -> grpc.StatusCode:
    """OK if a client with ``security`` gets an answer; UNAVAILABLE if the handshake fails."""
    async with AsyncClient(address, timeout=5, security=security) as client:
        try:
            await client.count_workflows()
        except Unavailable:
            return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.OK


async def test_a_tls_coordinator_answers_clients_that_trust_its_ca_and_nobody_else(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    ca, stranger = CertificateAuthority(tmp_path, "conveyor CA"), CertificateAuthority(tmp_path, "other CA")
    server = ca.issue_server()
    stack = await make_stack(REGISTRY, tls_cert_file=server.cert_file, tls_key_file=server.key_file)
    address = stack.server.address
    outcomes = {
        "trusts the CA": await counts_through(address, ChannelSecurity(tls=True, ca_file=ca.cert_file)),
        "plaintext": await counts_through(address, ChannelSecurity()),
        "trusts another CA": await counts_through(
            address, ChannelSecurity(tls=True, ca_file=stranger.cert_file)
        ),
    }
    assert outcomes == {
        "trusts the CA": grpc.StatusCode.OK,
        "plaintext": grpc.StatusCode.UNAVAILABLE,
        "trusts another CA": grpc.StatusCode.UNAVAILABLE,
    }


async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    ca, stranger = CertificateAuthority(tmp_path, "conveyor CA"), CertificateAuthority(tmp_path, "other CA")
    server, client, impostor = ca.issue_server(), ca.issue_client("client"), stranger.issue_client("impostor")
    stack = await make_stack(
        REGISTRY,
        tls_cert_file=server.cert_file,
        tls_key_file=server.key_file,
        tls_client_ca_file=ca.cert_file,
    )
    address = stack.server.address

    def presenting(cert: Path | None, key: Path | None) -> ChannelSecurity:
        return ChannelSecurity(tls=True, ca_file=ca.cert_file, cert_file=cert, key_file=key)

    outcomes = {
        "a client certificate": await counts_through(address, presenting(client.cert_file, client.key_file)),
        "no certificate": await counts_through(address, presenting(None, None)),
        "another CA's certificate": await counts_through(
            address, presenting(impostor.cert_file, impostor.key_file)
        ),
    }
    assert outcomes == {
        "a client certificate": grpc.StatusCode.OK,
        "no certificate": grpc.StatusCode.UNAVAILABLE,
        "another CA's certificate": grpc.StatusCode.UNAVAILABLE,
    }


async def test_an_executor_and_a_client_work_over_mutual_tls_with_tokens(
    make_stack: MakeStack, tmp_path: Path, tokens: Tokens
) -> None:
    ca = CertificateAuthority(tmp_path)
    server, executor_cert, client_cert = (
        ca.issue_server(),
        ca.issue_client("executor"),
        ca.issue_client("app"),
    )
    stack = await make_stack(
        REGISTRY,
        auth_tokens_file=tokens.file,
        tls_cert_file=server.cert_file,
        tls_key_file=server.key_file,
        tls_client_ca_file=ca.cert_file,
    )
    await stack.start_simulator()
    stack.start_executor(
        security=ChannelSecurity(
            token=tokens.executor,
            tls=True,
            ca_file=ca.cert_file,
            cert_file=executor_cert.cert_file,
            key_file=executor_cert.key_file,
        )
    )
    security = ChannelSecurity(
        token=tokens.client,
        tls=True,
        ca_file=ca.cert_file,
        cert_file=client_cert.cert_file,
        key_file=client_cert.key_file,
    )
    async with AsyncClient(stack.server.address, security=security) as client:
        started = await client.start_workflow("shout", {"word": "tls"})
        finished = await client.wait(started.workflow_id, timeout=30, poll_interval=0.05)
    assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, "TLS")


def test_tls_settings_that_cannot_work_are_refused_before_anything_starts(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'never-created.db'}"
    with pytest.raises(ValueError, match="needs both --tls-cert and --tls-key"):
        CoordinatorConfig(database_url, tls_cert_file=tmp_path / "cert.pem")
    with pytest.raises(ValueError, match="--tls-client-ca \\(mutual TLS\\) needs TLS"):
        CoordinatorConfig(database_url, tls_client_ca_file=tmp_path / "ca.pem")
    config = CoordinatorConfig(
        database_url, tls_cert_file=tmp_path / "missing.pem", tls_key_file=tmp_path / "missing.key"
    )
    with pytest.raises(ConfigurationError, match=r"cannot read --tls-key .*missing\.key"):
        CoordinatorServer(config, REGISTRY)
    with pytest.raises(ConfigurationError, match="needs both --tls-cert and --tls-key"):
        ChannelSecurity(tls=True, cert_file=tmp_path / "cert.pem")
    with pytest.raises(ConfigurationError, match="only apply with TLS"):
        ChannelSecurity(ca_file=tmp_path / "ca.pem")
    assert not (tmp_path / "never-created.db").exists()
