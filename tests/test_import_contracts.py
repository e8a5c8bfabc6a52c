"""The import contracts cover the whole tree, and nothing imports around them.

import-linter checks only the packages it is told about and only static imports: a
new top-level package left out of ``pyproject.toml`` passes every contract, and an
``importlib.import_module`` call is invisible to it. These tests close both gaps.
"""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LINTER = PYPROJECT["tool"]["importlinter"]
# Not part of the product: the tests and the benchmark scripts.
NOT_SHIPPED = {"tests", "benchmarks"}

# The only modules that may import by a computed name, and why. Each is a lazy
# loader whose targets are checked below; anything else must import statically.
LAZY_LOADERS = {
    "bot/cli/__init__.py": "each CLI verb's module, loaded when the parser is built",
    "executor/lazy.py": "the public names of executor, executor.tools, personas, skills, on first use",
    "executor/models/providers.py": "a provider's SDK, only when its key is set",
}


def top_level_packages() -> set[str]:
    return {
        p.parent.name
        for p in ROOT.glob("*/__init__.py")
        if p.parent.name not in NOT_SHIPPED and not p.parent.name.startswith(".")
    }


def layers_contract() -> dict[str, object]:
    return next(
        c
        for c in LINTER["contracts"]
        if c["type"] == "layers" and c["name"] == "Layers point down only"
    )


def test_every_top_level_package_is_in_the_layers_contract() -> None:
    packages = top_level_packages()
    assert packages, "found no package"
    layered = {
        name.strip()
        for layer in layers_contract()["layers"]  # type: ignore[attr-defined]
        for name in layer.replace(":", "|").split("|")
    }
    missing = packages - layered
    assert not missing, f"add {sorted(missing)} to the 'Layers point down only' contract"
    rooted = set(LINTER["root_packages"])
    assert packages <= rooted, f"add {sorted(packages - rooted)} to root_packages"


def test_every_top_level_package_is_installed() -> None:
    """A package missing from setuptools' include list works in a checkout, not installed."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    missing = {p for p in top_level_packages() if f"{p}*" not in include}
    assert not missing, f"add {sorted(f'{p}*' for p in missing)} to setuptools' include"


def _dynamic_imports(path: Path) -> list[int]:
    lines: list[int] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
            isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}
        ):
            lines.append(node.lineno)
    return lines


def test_no_import_by_computed_name_outside_the_lazy_loaders() -> None:
    found: dict[str, list[int]] = {}
    for package in sorted(top_level_packages()):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in LAZY_LOADERS and (lines := _dynamic_imports(path)):
                found[rel] = lines
    assert not found, (
        f"imports by computed name escape the import contracts: {found}; import "
        "statically, or add the module to LAZY_LOADERS with its reason"
    )
    for rel in LAZY_LOADERS:
        assert _dynamic_imports(ROOT / rel), f"{rel} no longer imports lazily: drop it"


@pytest.mark.parametrize(
    ("package", "table"),
    [
        ("executor", "_EXPORTS"),
        ("executor.tools", "_EXPORTS"),
        ("personas", "_WHERE"),
        ("skills", "_WHERE"),
    ],
)
def test_lazy_public_names_stay_inside_their_package(package: str, table: str) -> None:
    """A package's lazy names come from its own modules, so the layers still hold."""
    targets = set(getattr(importlib.import_module(package), table).values())
    outside = {t for t in targets if t != package and not t.startswith(f"{package}.")}
    assert not outside, f"{package} lazily imports from outside itself: {sorted(outside)}"


def test_providers_load_only_their_own_modules() -> None:
    from executor.models import providers

    modules = set(providers._KIND_MODULES.values())
    assert modules and all(m.startswith("executor.models.") for m in modules)
