"""The kernel's public API: sorted, complete, and each name really importable."""

from __future__ import annotations

import subprocess
import sys

import executor


def test_all_is_sorted_and_matches_the_exports() -> None:
    assert executor.__all__ == sorted(executor.__all__, key=lambda n: (not n[0].isupper(), n))
    assert set(executor.__all__) == set(executor._EXPORTS)


def test_every_exported_name_resolves_to_its_definition() -> None:
    for name in executor.__all__:
        value = getattr(executor, name)
        assert getattr(value, "__name__", name) == name or not hasattr(value, "__module__")


def test_importing_the_kernel_loads_no_provider_sdk_and_no_battery() -> None:
    code = (
        "import sys, executor, executor.run, executor.models;"
        "bad = [m for m in ('anthropic', 'openai', 'discord', 'sqlalchemy', 'apscheduler')"
        " if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
