"""The packages' dependency direction: server -> ranking -> retrieval; index_builder -> ranking,
retrieval; nothing imports server; retrieval and ranking never import grpc or generated code.
Every import statement counts, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: package -> the project packages it must never import
FORBIDDEN: dict[str, set[str]] = {
    "retrieval": {"ranking", "index_builder", "server", "grpc", "grpc_health", "grpc_reflection"},
    "ranking": {"index_builder", "server", "grpc", "grpc_health", "grpc_reflection"},
    "index_builder": {"server"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def _violations(package: str, root: Path = ROOT) -> list[str]:
    return [f"{path.relative_to(root)}:{line} imports {module}"
            for path in sorted((root / package).rglob("*.py"))
            for line, module in _imports(path) if module in FORBIDDEN[package]]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down(package):
    assert _violations(package) == []


def test_the_check_sees_a_wrong_import(tmp_path):
    (tmp_path / "ranking" / "sub").mkdir(parents=True)
    (tmp_path / "ranking" / "sub" / "bad.py").write_text(
        "import numpy\n\ndef f():\n    from server.service import TandemServer\n    import grpc.aio\n")
    assert _violations("ranking", tmp_path) == ["ranking/sub/bad.py:4 imports server",
                                                 "ranking/sub/bad.py:5 imports grpc"]
