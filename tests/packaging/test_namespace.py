"""Everything imports under ``conveyor.*``, and nothing under the folders' own names.

``coordinator/``, ``executor/`` and ``clients/`` sit at the top of the tree and ship as
``conveyor.coordinator``, ``conveyor.executor`` and ``conveyor.client``. Run from the
checkout, ``import coordinator`` would still work, and load every file a second time as
a different module (two ``Coordinator`` classes, two metric registries): these tests keep
anyone from writing it.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import conveyor

ROOT = Path(__file__).resolve().parents[2]
FOLDER_NAMES = {
    "coordinator": "conveyor.coordinator",
    "executor": "conveyor.executor",
    "clients": "conveyor.client",
}
SOURCES = ("conveyor", "coordinator", "executor", "clients", "bench", "tests", "protos")


def absolute_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_source_imports_a_folder_by_its_own_name() -> None:
    sources = {path.resolve() for folder in SOURCES for path in (ROOT / folder).rglob("*.py")}
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: import {module} (use {FOLDER_NAMES[module.split('.')[0]]})"
        for path in sorted(sources)
        for line, module in absolute_imports(path)
        if module.split(".")[0] in FOLDER_NAMES
    ]
    assert offenders == []


def test_every_module_imports_under_the_namespace_alone() -> None:
    """Import all of ``conveyor`` in a fresh interpreter: no module loads under a folder name."""
    script = (
        "import importlib, pkgutil, sys, conveyor\n"
        "for info in pkgutil.walk_packages(conveyor.__path__, 'conveyor.'):\n"
        "    if not info.name.endswith(('__main__', '.migrations.env')):\n"
        "        importlib.import_module(info.name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FOLDER_NAMES)!r}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_the_mounted_folders_are_the_top_level_ones() -> None:
    for folder, module_name in FOLDER_NAMES.items():
        module = importlib.import_module(module_name)
        assert Path(module.__file__ or "").resolve().parent == ROOT / folder
    assert {info.name for info in pkgutil.iter_modules(conveyor.__path__)} >= {
        "coordinator",
        "executor",
        "client",
        "testing",
    }
