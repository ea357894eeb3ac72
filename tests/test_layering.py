"""Imports point one way (README "How it fits together"): checked on the source, not by convention."""

import ast

import pytest

from tests.conftest import REPO

# package → top-level packages (or subpackages) it must never import
FORBIDDEN = {
    "models/networks": ("data", "app", "service", "models.compress", "models.inference"),
    "models/inference": ("app", "service", "models.compress"),
    "models/compress": ("app", "service"),
    "data": ("models", "app", "service"),
    "service": ("app",),
}


def _imports(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_it_must_not(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    wrong = [f"{path.relative_to(REPO)} imports {name}" for path in files for name in _imports(path)
             if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[package])]
    assert not wrong, wrong
