"""Imports go one way (`mcp_server -> engine <- runtimes`): nothing in the engine, at any depth of its
area packages, imports the surfaces, the runtimes, or the libraries they wrap."""

from __future__ import annotations

import ast
from pathlib import Path

import engine

FORBIDDEN = {"mcp", "docker", "starlette", "httpx", "uvicorn", "mcp_server", "runtimes"}


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_engine_imports_neither_the_surfaces_nor_the_runtimes_nor_their_libraries():
    files = sorted(Path(engine.__file__).parent.rglob("*.py"))
    assert any(p.parent.name == "runs" for p in files), "the area packages are walked too"
    found = {str(p.relative_to(Path(engine.__file__).parent.parent)): sorted(imported(p) & FORBIDDEN)
             for p in files}
    assert {k: v for k, v in found.items() if v} == {}
