"""A PostgreSQL server as a fault to inject: restart it, kill connections, bring it back.

Two kinds of server. The soak (``make chaos``) restarts the machine's Debian-style
cluster, driven by ``pg_ctlcluster`` (as root or the ``postgres`` user); which one is
``$CONVEYOR_CHAOS_PG_CLUSTER`` (e.g. ``"15 main"``), else the only version under
``/etc/postgresql`` with the cluster ``main``; whatever happens, :func:`ensure_running`
leaves it accepting connections. The test suite restarts a :class:`PrivateServer` of its
own instead: restarting the shared server would break every other test run on the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from conveyor.errors import ConfigurationError

CLUSTER_ENV = "CONVEYOR_CHAOS_PG_CLUSTER"
#: The application_name the chaos coordinator connects with, so only its connections are killed.
COORDINATOR_APPLICATION = "conveyor-chaos-coordinator"


def local_cluster() -> tuple[str, str]:
    """(version, name) of the PostgreSQL cluster to restart."""
    configured = os.environ.get(CLUSTER_ENV, "").split()
    if len(configured) == 2:
        return configured[0], configured[1]
    versions = sorted(path.name for path in Path("/etc/postgresql").glob("*") if path.is_dir())
    if len(versions) != 1:
        raise ConfigurationError(
            f"cannot tell which PostgreSQL cluster to restart (found versions {versions} under "
            f'/etc/postgresql); set {CLUSTER_ENV}="VERSION NAME", e.g. "15 main"'
        )
    return versions[0], "main"


def _pg_ctlcluster(action: str) -> None:
    version, name = local_cluster()
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as error:
        output = getattr(error, "stderr", b"") or b""
        raise ConfigurationError(
            f"{' '.join(command)} failed ({error}; {output.decode(errors='replace').strip()}); the chaos "
            "database faults need pg_ctlcluster and root or postgres privileges"
        ) from None


class Server(Protocol):
    """A PostgreSQL server the chaos cluster may restart."""

    def restart(self) -> None:
        """Restart the server: every connection breaks, and it is down for a moment."""


class SharedCluster:
    """The machine's cluster (``pg_ctlcluster``): what ``make chaos`` runs against."""

    def restart(self) -> None:
        _pg_ctlcluster("restart")


class PrivateServer:
    """A throwaway PostgreSQL server in ``directory`` (which exists) on a free port.

    ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the
    ``postgres`` user, who must be able to reach ``directory``. Trust authentication,
    loopback only, no fsync: it holds test data only.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = _free_port()
        self.bin = _postgres_bin()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if not self.data.exists():
            if os.geteuid() == 0:
                shutil.chown(self.directory, "postgres", "postgres")
            self._run("initdb", "--auth=trust", "--username=postgres", "--no-sync", "-D", str(self.data))
        self._pg_ctl("start", "-w", "-l", str(self.directory / "server.log"))

    def restart(self) -> None:
        self._pg_ctl("restart", "-w", "-m", "fast", "-l", str(self.directory / "server.log"))

    def stop(self) -> None:
        self._pg_ctl("stop", "-w", "-m", "immediate")

    def _pg_ctl(self, action: str, *arguments: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", action, "-D", str(self.data), "-o", options, *arguments)

    def _run(self, program: str, *arguments: str) -> None:
        command = [str(self.bin / program), *arguments]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        except subprocess.CalledProcessError as error:
            raise ConfigurationError(
                f"{' '.join(command)} failed: {error.stderr.decode(errors='replace').strip()}"
            ) from None


def _postgres_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates:
        raise ConfigurationError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (initdb)")
    return candidates[-1].parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accepting(url: str) -> bool:
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def ensure_running(url: str, timeout: float = 60.0) -> None:
    """Start the server if it does not answer, and wait until it does."""
    if accepting(url):
        return
    _pg_ctlcluster("start")
    deadline = time.monotonic() + timeout
    while not accepting(url):
        if time.monotonic() > deadline:
            raise ConfigurationError(f"PostgreSQL at {url} is still down {timeout:.0f}s after a start")
        time.sleep(0.5)


def terminate_connections(url: str, application_name: str = COORDINATOR_APPLICATION) -> int:
    """``pg_terminate_backend`` every connection of ``application_name``; returns how many."""
    engine = sa.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            killed = connection.execute(
                sa.text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": application_name},
            ).scalar_one()
        return int(killed)
    finally:
        engine.dispose()


def with_application_name(url: str, application_name: str = COORDINATOR_APPLICATION) -> str:
    """``url`` with an ``application_name`` its connections can be recognised by."""
    return (
        sa.engine.make_url(url)
        .update_query_dict({"application_name": application_name})
        .render_as_string(hide_password=False)
    )
