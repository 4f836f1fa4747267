"""The coordinator refuses to serve the network unauthenticated unless told ``--insecure``, and says why."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.coordinator.auth_tls import is_loopback
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import CoordinatorServer
from conveyor.errors import ConfigurationError
from security.tokens import Tokens
from support import registry_of

REFUSAL = "refusing to listen on 0.0.0.0:0 without authentication"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("conveyor.coordinator.internal", False),
    ],
)
def test_only_loopback_addresses_count_as_private(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_unauthenticated_coordinator_refuses_a_public_address(database_url: str) -> None:
    config = CoordinatorConfig(database_url, listen="0.0.0.0:0")
    with pytest.raises(ConfigurationError, match=REFUSAL) as refusal:
        CoordinatorServer(config, registry_of())
    assert "--auth-tokens-file" in str(refusal.value) and "--insecure" in str(refusal.value)


@pytest.mark.parametrize("protection", ["tokens", "--insecure"])
async def test_a_public_address_is_served_with_tokens_or_when_told_insecure(
    database_url: str, tokens: Tokens, protection: str
) -> None:
    if protection == "tokens":
        config = CoordinatorConfig(database_url, listen="0.0.0.0:0", auth_tokens_file=tokens.file)
    else:
        config = CoordinatorConfig(database_url, listen="0.0.0.0:0", insecure=True)
    server = CoordinatorServer(config, registry_of())
    port = await server.start()
    try:
        assert port > 0
    finally:
        await server.stop(grace=0.1)


def test_the_command_line_says_why_it_refuses(tmp_path: Path) -> None:
    database = tmp_path / "conveyor.db"
    command = [
        sys.executable,
        "-m",
        "conveyor.cli",
        "coordinator",
        "--db",
        f"sqlite:///{database}",
        "--workflows",
        "bench.workflows",
        "--listen",
        "0.0.0.0:0",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2
    assert REFUSAL in finished.stderr
    assert not database.exists(), "it refused before touching the database"


async def test_tokens_without_tls_on_a_public_address_are_warned_about(
    database_url: str, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    config = CoordinatorConfig(database_url, listen="0.0.0.0:0", auth_tokens_file=tokens.file)
    with caplog.at_level(logging.WARNING, logger="conveyor.coordinator.auth_tls"):
        CoordinatorServer(config, registry_of())
    assert "bearer tokens cross the network in clear" in caplog.text
