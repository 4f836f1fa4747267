"""The generated stubs in ``conveyor/v1`` match the wire contract in ``protos/``.

The stubs are committed; these tests catch a .proto edited without ``make protos``,
a hand-edited stub, and generated code that only imports after being rewritten.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "protos" / "conveyor" / "v1"
STUB_DIR = REPO / "conveyor" / "v1"
REGENERATE = "run `make protos` (protos/generate.py) and commit the regenerated conveyor/v1"
EXPECTED_SERVICES = {"WorkflowService", "ExecutorService", "AdminService"}


@dataclass(frozen=True)
class Rpc:
    name: str
    client_streaming: bool
    server_streaming: bool


@dataclass(frozen=True)
class Service:
    proto: Path
    name: str
    rpcs: tuple[Rpc, ...]

    @property
    def module(self) -> str:
        return f"conveyor.v1.{self.proto.stem}"


def services_in_protos() -> list[Service]:
    """Services and RPCs as the .proto files declare them (comments stripped)."""
    found = []
    rpc_pattern = re.compile(
        r"rpc\s+(\w+)\s*\(\s*(stream\s+)?[\w.]+\s*\)\s*returns\s*\(\s*(stream\s+)?[\w.]+\s*\)"
    )
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        text = re.sub(r"//[^\n]*", "", proto.read_text())
        for match in re.finditer(r"service\s+(\w+)\s*\{(.*?)\n\}", text, re.DOTALL):
            rpcs = tuple(
                Rpc(rpc.group(1), bool(rpc.group(2)), bool(rpc.group(3)))
                for rpc in rpc_pattern.finditer(match.group(2))
            )
            found.append(Service(proto, match.group(1), rpcs))
    return found


def committed_files() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(STUB_DIR.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("protos")
    result = subprocess.run(
        [sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, f"protos/generate.py failed:\n{result.stdout}\n{result.stderr}"
    target = out / "conveyor" / "v1"
    return {path.name: path.read_bytes() for path in sorted(target.iterdir()) if path.is_file()}


def test_committed_stubs_are_byte_identical_to_a_fresh_generation(regenerated: dict[str, bytes]) -> None:
    committed = committed_files()

    missing = sorted(set(regenerated) - set(committed))
    extra = sorted(name for name in set(committed) - set(regenerated) if "_pb2" in name)
    differing = sorted(
        name for name in set(regenerated) & set(committed) if regenerated[name] != committed[name]
    )
    assert not (missing or extra or differing), (
        f"conveyor/v1 is out of date with protos/ (missing: {missing}, stale: {extra}, "
        f"differing: {differing}); {REGENERATE}"
    )


def test_every_proto_has_its_generated_modules(regenerated: dict[str, bytes]) -> None:
    for proto in PROTO_DIR.glob("*.proto"):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert f"{proto.stem}{suffix}" in regenerated, f"no {proto.stem}{suffix} generated; {REGENERATE}"


def test_every_generated_module_imports_as_generated_in_a_fresh_interpreter() -> None:
    """Generated imports are ``from conveyor.v1 import ...`` as written by protoc; no rewriting is needed."""
    modules = sorted(f"conveyor.v1.{path.stem}" for path in STUB_DIR.glob("*.py") if path.stem != "__init__")
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    print(name, module.__file__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )

    assert result.returncode == 0, f"a generated module does not import:\n{result.stderr}\n{REGENERATE}"
    imported = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert sorted(imported) == modules
    for name, file in imported.items():
        assert Path(file).parent == STUB_DIR, f"{name} was imported from {file}, not from {STUB_DIR}"


def test_generated_code_imports_its_siblings_by_package_path() -> None:
    for path in STUB_DIR.glob("*.py"):
        for line in path.read_text().splitlines():
            if re.match(r"\s*(from|import)\s+\w+_pb2\b", line):
                pytest.fail(
                    f"{path.name} imports a sibling without its package: {line.strip()!r}; {REGENERATE}"
                )


def test_protos_declare_the_three_services() -> None:
    assert {service.name for service in services_in_protos()} == EXPECTED_SERVICES
    assert all(service.rpcs for service in services_in_protos())


@pytest.mark.parametrize("service", services_in_protos(), ids=lambda service: service.name)
def test_generated_service_has_every_rpc_of_its_proto(service: Service) -> None:
    messages = importlib.import_module(f"{service.module}_pb2")
    stubs = importlib.import_module(f"{service.module}_pb2_grpc")
    declared = {rpc.name: rpc for rpc in service.rpcs}

    descriptor = messages.DESCRIPTOR.services_by_name.get(service.name)
    assert descriptor is not None, f"{service.name} missing from {service.module}_pb2; {REGENERATE}"
    assert set(descriptor.methods_by_name) == set(declared), REGENERATE
    for name, rpc in declared.items():
        method = descriptor.methods_by_name[name]
        assert (method.client_streaming, method.server_streaming) == (
            rpc.client_streaming,
            rpc.server_streaming,
        )

    servicer = getattr(stubs, f"{service.name}Servicer")
    assert callable(getattr(stubs, f"add_{service.name}Servicer_to_server"))
    channel = grpc.insecure_channel("127.0.0.1:1")  # never connected: stubs connect lazily
    try:
        stub = getattr(stubs, f"{service.name}Stub")(channel)
        for name in declared:
            assert callable(getattr(stub, name)), f"{service.name}Stub has no {name}; {REGENERATE}"
            assert callable(getattr(servicer, name)), f"{service.name}Servicer has no {name}; {REGENERATE}"
    finally:
        channel.close()
