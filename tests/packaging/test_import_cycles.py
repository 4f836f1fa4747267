"""The conveyor package has no import cycles: each module can be read (and imported) after the
modules it names, never half-initialised because one of them imports it back.

Module-level imports only: those inside functions (deliberately late) do not run at import
time. Those under ``if TYPE_CHECKING:`` do not either, but a cycle through them still means
two modules that each need the other's types to be read (metrics.py and engine.py were
one), so a second test forbids those too. Run alone with
``.venv/bin/python -m pytest tests/packaging/test_import_cycles.py``.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "conveyor"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name, following the mounted folders' symlinks."""
    found: dict[str, Path] = {}
    for folder, _dirs, files in os.walk(PACKAGE, followlinks=True):
        relative = Path(folder).relative_to(PACKAGE)
        if "__pycache__" in relative.parts:
            continue
        prefix = ["conveyor", *relative.parts]
        for name in files:
            if name.endswith(".py"):
                parts = prefix if name == "__init__.py" else [*prefix, name[:-3]]
                found[".".join(parts)] = Path(folder) / name
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(statements: list[ast.stmt], type_checking: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports in a module's body and the branches of its if/try blocks; those under
    ``if TYPE_CHECKING:`` only when ``type_checking``."""
    for statement in statements:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            yield statement
        elif isinstance(statement, ast.If):
            if type_checking or not _is_type_checking(statement.test):
                yield from _module_level(statement.body, type_checking)
            yield from _module_level(statement.orelse, type_checking)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, *(h.body for h in statement.handlers), statement.orelse):
                yield from _module_level(block, type_checking)
            yield from _module_level(statement.finalbody, type_checking)


def imports_of(name: str, path: Path, known: set[str], type_checking: bool) -> set[str]:
    """The package's modules ``name`` imports at module level."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _module_level(ast.parse(path.read_text(), str(path)).body, type_checking):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:
            base_parts = package.split(".")
            base = ".".join(base_parts[: len(base_parts) - node.level + 1])
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            # ``from package import module`` imports that module; ``from module import name``
            # imports the module that defines the name.
            targets.add(submodule if submodule in known else source)
    return {target for target in targets if target in known and target != name}


def import_graph(*, type_checking: bool = False) -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known, type_checking) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_graph_sees_the_mounted_folders_and_their_imports() -> None:
    graph = import_graph()
    assert "conveyor.coordinator.engine" in graph
    assert "conveyor.coordinator.store.queue" in graph
    assert "conveyor.executor.worker" in graph
    assert "conveyor.client.client" in graph
    # Relative, absolute and ``from package import module`` imports all count.
    assert "conveyor.coordinator.context" in graph["conveyor.coordinator.engine"]
    assert "conveyor.backoff" in graph["conveyor.executor.worker"]
    assert "conveyor.coordinator.store.schema" in graph["conveyor.coordinator.store.queue"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_conveyor_package_has_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_not_even_through_imports_for_type_checking() -> None:
    assert cycles(import_graph(type_checking=True)) == []
