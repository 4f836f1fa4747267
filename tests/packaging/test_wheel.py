"""The wheel as users get it: one import namespace, only what should ship, and extras that work.

The wheel is built from this checkout; each install goes into a fresh virtualenv (no
system site-packages), so a dependency missing from an extra fails here, not at a user's.
The coordinator runs from a ``[coordinator]`` install and the client from a base install.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT = 600
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(out), str(ROOT)],
        check=True,
        timeout=PIP_TIMEOUT,
    )
    [built] = out.glob("conveyor-*.whl")
    return built


def venv_with(wheel: Path, extras: str, where: Path) -> Path:
    """A fresh virtualenv holding ``conveyor[extras]`` from ``wheel``; returns its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", where], check=True, timeout=120)
    bin_dir = where / "bin"
    requirement = f"conveyor[{extras}] @ {wheel.as_uri()}" if extras else str(wheel)
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement],
        check=True,
        timeout=PIP_TIMEOUT,
    )
    return bin_dir


def test_the_wheel_has_one_top_level_name_and_ships_only_the_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"conveyor"}
    assert "conveyor/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    # The mounted folders, the migrations, the status page and the simulator are all inside.
    for expected in (
        "conveyor/coordinator/engine.py",
        "conveyor/coordinator/static/index.html",
        "conveyor/coordinator/store/migrations/env.py",
        "conveyor/executor/worker.py",
        "conveyor/client/client.py",
        "conveyor/testing/simulator/server.py",
        "conveyor/v1/workflow_service_pb2.py",
    ):
        assert expected in names, expected
    assert not [name for name in names if "__pycache__" in name or name.startswith(("bench/", "tests/"))]
    metadata = zipfile.ZipFile(wheel).read(f"conveyor-{conveyor.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {conveyor.__version__}\n" in metadata


@pytest.fixture(scope="module")
def coordinator_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return venv_with(wheel, "coordinator", tmp_path_factory.mktemp("coordinator-venv"))


@pytest.fixture(scope="module")
def client_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return venv_with(wheel, "", tmp_path_factory.mktemp("client-venv"))


@pytest.fixture
def coordinator(coordinator_install: Path, tmp_path: Path) -> Iterator[str]:
    """``conveyor coordinator`` from the ``[coordinator]`` install, with a workflow of no steps."""
    (tmp_path / "hello_workflows.py").write_text(
        textwrap.dedent(
            """
            from conveyor import workflow

            @workflow
            async def hello(ctx, name):
                return f"hello {name}"
            """
        )
    )
    process = subprocess.Popen(
        [
            coordinator_install / "conveyor",
            "coordinator",
            "--db",
            f"sqlite:///{tmp_path / 'conveyor.db'}",
            "--workflows",
            "hello_workflows",
            "--listen",
            "127.0.0.1:0",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.startswith("coordinator listening on "):
                yield line.removeprefix("coordinator listening on ").strip()
                break
        else:
            pytest.fail(f"the coordinator exited ({process.wait()}) without listening")
    finally:
        process.terminate()
        process.wait(30)


def test_a_base_install_starts_and_waits_for_a_workflow(client_install: Path, coordinator: str) -> None:
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        from conveyor.client import Client

        # The base install is the client's: none of the coordinator's or executor's dependencies.
        heavy = [m for m in ("sqlalchemy", "alembic", "psycopg", "aiohttp", "anthropic", "rich")
                 if importlib.util.find_spec(m) is not None]
        assert not heavy, heavy
        with Client({coordinator!r}, timeout=30) as client:
            started = client.start_workflow("hello", {{"name": "wheel"}})
            finished = client.wait(started.workflow_id, timeout=60)
        print(finished.status.value, finished.result)
        """
    )
    run = subprocess.run(
        [client_install / "python", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "completed hello wheel"


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["coordinator", "--db", "sqlite://", "--workflows", "app.workflows"], "coordinator"),
        (["executor"], "executor"),
        (["list"], "cli"),
    ],
)
def test_a_command_whose_extra_is_missing_says_which_to_install(
    client_install: Path, argv: list[str], extra: str
) -> None:
    run = subprocess.run([client_install / "conveyor", *argv], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert f"pip install 'conveyor[{extra}]'" in run.stderr, run.stderr
