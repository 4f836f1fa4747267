"""What a benchmark ran on: hardware, software versions, and how busy the machine was.

A number without its machine is not worth much, and on a shared 2-core box the load
from other processes matters as much as the CPU model, so the load average is part
of the record (taken at the start and at the end of each run).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

PACKAGES = ("conveyor", "anthropic", "aiohttp", "grpcio", "SQLAlchemy", "psycopg", "dbos")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def describe(postgres_url: str | None = None) -> dict[str, Any]:
    """The machine and software, as JSON-ready data."""
    versions: dict[str, str] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["python"] = platform.python_version()
    versions["sqlite"] = sqlite3.sqlite_version
    postgres_settings: dict[str, str] = {}
    if postgres_url:
        versions["postgresql"], postgres_settings = _postgres_facts(postgres_url)
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
        "postgresql_settings": postgres_settings,
        "git_commit": git_commit(),
        "load_average_at_start": load_average(),
    }


def one_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu_model']}, {machine['logical_cpus']} CPUs, {machine['memory_gib']} GiB, "
        f"{machine['os']}, Python {machine['versions']['python']}"
    )


#: Server settings that move the numbers; autovacuum decides whether tables get statistics.
POSTGRES_SETTINGS = ("autovacuum", "fsync", "synchronous_commit", "shared_buffers", "max_connections")


def _postgres_facts(url: str) -> tuple[str, dict[str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            version = str(connection.execute(sa.text("SHOW server_version")).scalar_one())
            settings = {
                name: str(connection.execute(sa.text(f"SHOW {name}")).scalar_one())
                for name in POSTGRES_SETTINGS
            }
            return version, settings
    except sa.exc.SQLAlchemyError as error:
        return f"unreachable ({type(error).__name__})", {}
    finally:
        engine.dispose()


def git_commit() -> str:
    """The checkout's short commit, marked when tracked files differ from it ("unknown" outside git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+uncommitted changes" if dirty else "")
