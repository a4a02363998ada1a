"""The packages' dependency direction: server -> ranking -> retrieval; index_builder -> ranking,
retrieval; nothing imports server; retrieval and ranking never import grpc or generated code.
Every import statement counts, also those inside functions. The packages are installed as
``tandem.<package>``, and every import of one goes through that name."""

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


PACKAGES = ("proto", "retrieval", "ranking", "server", "index_builder")


def _absolute_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file; ``tandem.ranking.x``
    counts as ``ranking``."""
    out = []
    for line, module in _absolute_imports(path):
        parts = module.split(".")
        out.append((line, parts[1] if parts[0] == "tandem" and len(parts) > 1 else parts[0]))
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
        "import numpy\n\ndef f():\n    from tandem.server.service import TandemServer\n    import grpc.aio\n")
    assert _violations("ranking", tmp_path) == ["ranking/sub/bad.py:4 imports server",
                                                 "ranking/sub/bad.py:5 imports grpc"]


def test_project_packages_are_imported_through_the_tandem_namespace():
    """``pip install`` puts the packages under ``tandem/`` only: a bare ``import ranking`` works in
    a checkout (its root is on sys.path) and fails once installed."""
    bare = [f"{path.relative_to(ROOT)}:{line} imports {module}"
            for top in (*PACKAGES, "tests", "benchmarks")
            for path in sorted((ROOT / top).rglob("*.py")) if "_generated" not in path.parts
            for line, module in _absolute_imports(path) if module.split(".")[0] in PACKAGES]
    assert bare == []
