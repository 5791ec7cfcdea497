"""Import rules between the packages (STYLE.md section 10), checked on the source's AST."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level modules it must never import
FORBIDDEN = {
    "engine": {"schemas", "workers", "service", "redis", "rq", "fastapi", "pydantic", "pydantic_settings", "uvicorn"},
    "schemas": {"engine", "workers", "service", "torch", "redis", "rq", "fastapi"},
    "workers": {"service", "fastapi", "uvicorn"},
    # The client talks HTTP only: importable without torch, usable against a service on another machine.
    "client": {"engine", "workers", "service", "torch", "redis", "rq", "fastapi", "uvicorn"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_engine_reads_no_environment() -> None:
    # The engine takes paths and devices as arguments; only the settings at the edge read env vars.
    for path in (ROOT / "engine").rglob("*.py"):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path
