"""SQL lives in ``coordinator/store/`` only: elsewhere a module may name a ``Connection``
(to type the units it hands to the writer), never build a statement."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("conveyor", "coordinator", "executor", "clients")
#: What a module outside the store may import from SQLAlchemy.
ALLOWED = {("sqlalchemy.engine", "Connection")}


def sqlalchemy_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.partition(".")[0] == "sqlalchemy"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").partition(".")[0] == "sqlalchemy":
            found += [
                f"{node.module}.{alias.name}"
                for alias in node.names
                if (node.module, alias.name) not in ALLOWED
            ]
    return found


def test_no_module_outside_the_store_builds_sql() -> None:
    store = ROOT / "coordinator" / "store"
    sources = {
        path.resolve()
        for folder in PRODUCT
        for path in (ROOT / folder).rglob("*.py")
        if "conveyor/v1" not in str(path)
    }
    offenders = {
        str(path.relative_to(ROOT)): names
        for path in sorted(sources)
        if not path.is_relative_to(store) and (names := sqlalchemy_imports(path))
    }
    assert offenders == {}
