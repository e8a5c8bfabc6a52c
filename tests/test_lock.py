"""The locks install what pyproject.toml allows, with hashes, and agree with each other.

A range edited in pyproject.toml without `make lock` would leave the README's commands
installing versions outside it; this catches that without the network.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)(?: ; ([^\\\n]+))?", re.MULTILINE)


def pins(lock: str) -> dict[str, set[str]]:
    """Every version the lock pins per distribution (a universal lock forks by Python)."""
    found: dict[str, set[str]] = {}
    for name, version, _marker in PIN.findall((ROOT / lock).read_text()):
        found.setdefault(canonicalize_name(name), set()).add(version)
    return found


def applicable(lock: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, version, marker in PIN.findall((ROOT / lock).read_text()):
        if not marker or Marker(marker.strip()).evaluate():
            found[canonicalize_name(name)] = version
    return found


@pytest.mark.parametrize(
    ("lock", "groups"),
    [("requirements.lock", ["main"]), ("requirements-dev.lock", ["main", "dev"])],
)
def test_every_declared_distribution_is_pinned_within_its_range(
    lock: str, groups: list[str]
) -> None:
    declared = [
        Requirement(r)
        for g in groups
        for r in (PROJECT["dependencies"] if g == "main" else PROJECT["optional-dependencies"][g])
    ]
    locked = pins(lock)
    problems = []
    for req in declared:
        versions = locked.get(canonicalize_name(req.name))
        if not versions:
            problems.append(f"{req.name} is not in {lock}")
        elif not all(req.specifier.contains(v, prereleases=True) for v in versions):
            problems.append(f"{req.name} {sorted(versions)} is outside {req.specifier}")
    assert not problems, "; ".join(problems) + " (run `make lock`)"


def test_the_two_locks_agree() -> None:
    run, dev = applicable("requirements.lock"), applicable("requirements-dev.lock")
    differ = {n: (v, dev.get(n)) for n, v in run.items() if dev.get(n) != v}
    assert not differ, f"requirements.lock and requirements-dev.lock differ: {differ}"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_every_pin_has_hashes(lock: str) -> None:
    """pip checks them (hash-checking mode), even the 23.2 that `python3 -m venv` brings."""
    text = (ROOT / lock).read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text.split("\n", 2)[2])
    unhashed = [b.split()[0] for b in blocks if "==" in b and "--hash=sha256:" not in b]
    assert not unhashed, f"pins without hashes in {lock}: {unhashed}"
    assert "make lock" in text.splitlines()[1], "the header names how to refresh it"
