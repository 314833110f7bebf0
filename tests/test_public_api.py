"""The seams between packages: the integrations, the federated app, the benchmarks and the
examples use only the core's public API (the package root, ``softcar.errors``, and the tiny test
models of ``softcar.testing``), and no module imports another module's ``_private`` names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import softcar

ROOT = Path(__file__).resolve().parents[1]
CONSUMERS = ["integrations", "federated", "examples", "benchmarks"]
PUBLIC_SUBMODULES = {"softcar", "softcar.errors", "softcar.testing"}  # testing: tiny models for tests


def _python_files(*folders: str) -> list[Path]:
    files = []
    for folder in folders:
        files += [p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts]
    return sorted(files)


def _imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from module import name`` and ``(module, "")`` for ``import module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names]
    return out


@pytest.mark.parametrize("path", _python_files(*CONSUMERS), ids=lambda p: str(p.relative_to(ROOT)))
def test_consumers_use_only_the_public_core_api(path: Path) -> None:
    for module, name in _imports(path):
        if module == "softcar" or module.startswith("softcar."):
            assert module in PUBLIC_SUBMODULES, f"{path.name} imports {module}.{name}: use the package root"
            if module == "softcar" and name:
                assert name in softcar.__all__, f"{path.name} imports softcar.{name}, which is not exported"


@pytest.mark.parametrize("path", _python_files("src", *CONSUMERS), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_across_modules(path: Path) -> None:
    for module, name in _imports(path):
        if name.startswith("_") and not name.startswith("__"):
            pytest.fail(f"{path.relative_to(ROOT)} imports private {name!r} from {module}")
