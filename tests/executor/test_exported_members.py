"""The kernel's public API, tested against the real namespace (httpx's
``test_exported_members``): ``__all__`` is sorted, names exactly what the package
holds, every name resolves to its definition whatever was imported first, no
public name is a submodule's, and what hosts import from submodules is exported."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import executor

ROOT = Path(executor.__file__).resolve().parents[1]
HOSTS = ("adapters", "bot", "commands", "personas", "skills", "benchmarks", "scripts")
# Names a host may import from a submodule without the package exporting them:
# the test doubles are their own namespace (like structlog.testing), and a bare
# WINDOW at the top would not say whose window it is.
# executor.lazy: the helper other packages' __init__ use for their own lazy names.
SUBMODULE_ONLY = {"executor.testing": None, "executor.budget": {"WINDOW"}, "executor.lazy": None}


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest."""
    if re.fullmatch(r"[A-Z0-9_]+", name):
        return (0, name)
    return (1 if name[0].isupper() else 2, name)


def _import_every_submodule() -> None:
    for info in pkgutil.walk_packages(executor.__path__, "executor."):
        importlib.import_module(info.name)


def test_all_is_sorted_and_matches_the_exports() -> None:
    assert executor.__all__ == sorted(executor.__all__, key=_isort_key)
    assert len(set(executor.__all__)) == len(executor.__all__)
    assert set(executor.__all__) == set(executor._EXPORTS)


def test_every_name_resolves_to_its_definition_whatever_was_imported_first() -> None:
    _import_every_submodule()  # a submodule that shared a name would now shadow it
    for name in executor.__all__:
        defined_in = importlib.import_module(executor._EXPORTS[name])
        assert getattr(executor, name) is getattr(defined_in, name), name


def test_the_namespace_holds_exactly_all() -> None:
    _import_every_submodule()
    for name in executor.__all__:
        getattr(executor, name)
    public = {
        name
        for name, value in vars(executor).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(executor.__all__)
    assert set(dir(executor)) >= set(executor.__all__)


def test_no_public_name_is_a_submodule_s_name() -> None:
    submodules = {info.name for info in pkgutil.iter_modules(executor.__path__)}
    assert not submodules & set(executor.__all__)


def test_fan_out_is_the_function_and_fanout_the_module_in_either_order() -> None:
    orders = (
        "from executor import fan_out, fanout",
        "import executor.fanout; from executor import fan_out, fanout",
        "from executor import fanout, fan_out",
    )
    for imports in orders:
        code = f"{imports}; print(type(fan_out).__name__, type(fanout).__name__)"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["function", "module"], imports


def test_the_type_checking_imports_are_the_exports() -> None:
    tree = ast.parse(Path(executor.__file__).read_text(encoding="utf-8"))
    blocks = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
    ]
    assert len(blocks) == 1
    seen: dict[str, str] = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names:
            assert alias.asname is None
            seen[alias.name] = node.module
    assert seen == executor._EXPORTS


def _host_imports() -> dict[tuple[str, str], list[str]]:
    """(module, name) -> the files importing ``name`` from an ``executor`` submodule."""
    found: dict[tuple[str, str], list[str]] = {}
    for host in HOSTS:
        for path in sorted((ROOT / host).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom) or node.level:
                    continue
                module = node.module or ""
                if module == "executor" or not module.startswith("executor."):
                    continue
                for alias in node.names:
                    where = str(path.relative_to(ROOT))
                    found.setdefault((module, alias.name), []).append(where)
    return found


def test_what_hosts_import_from_submodules_is_exported() -> None:
    missing = []
    for (module, name), files in sorted(_host_imports().items()):
        if isinstance(getattr(importlib.import_module(module), name, None), types.ModuleType):
            continue
        allowed = SUBMODULE_ONLY.get(module, set())
        if module in SUBMODULE_ONLY and (allowed is None or name in allowed):
            continue
        if executor._EXPORTS.get(name) != module:
            missing.append(f"{module}.{name} (imported by {', '.join(files)})")
    assert not missing, "export these from executor/__init__.py:\n" + "\n".join(missing)


def test_importing_the_kernel_loads_no_provider_sdk_and_no_battery() -> None:
    code = (
        "import sys, executor, executor.run, executor.models;"
        "bad = [m for m in ('anthropic', 'openai', 'discord', 'sqlalchemy', 'apscheduler')"
        " if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_import_executor_loads_no_submodule_until_a_name_is_used() -> None:
    code = (
        "import sys, executor;"
        "print(sorted(m for m in sys.modules if m.startswith('executor.')));"
        "executor.ModelProfile;"
        "print('executor.run' in sys.modules, 'pydantic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = out.stdout.strip().splitlines()
    assert first == "['executor.lazy']"  # the loader itself, which imports only the stdlib
    assert second.split()[0] == "False"  # a name loads its own module, not the loop
