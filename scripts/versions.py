"""Print the versions of what coterie leans on, one line each, and any that differ
from the lock (so a red run says what moved). Usage: python scripts/versions.py [LOCK]
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("anthropic", "openai", "httpx2", "discord.py", "SQLAlchemy", "APScheduler", "pydantic")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: Path) -> dict[str, str]:
    """The lock's pins that apply here (a universal lock forks by Python and platform)."""
    from packaging.markers import Marker

    pins: dict[str, str] = {}
    pattern = r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)(?: ; ([^\\\n]+))?"
    for name, version, marker in re.findall(pattern, lock.read_text(), re.MULTILINE):
        if not marker or Marker(marker.strip()).evaluate():
            pins[canonical(name)] = version
    return pins


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def main() -> int:
    lock = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "requirements-dev.lock"
    have = installed()
    pins = locked(lock)
    for name in WATCHED:
        version = have.get(canonical(name), "not installed")
        pin = pins.get(canonical(name))
        note = "" if pin in (None, version) else f"  (lock: {pin})"
        print(f"{name:<12} {version}{note}")
    moved = sorted(
        f"{name} {pins[name]} -> {have[name]}"
        for name in pins
        if name in have and have[name] != pins[name]
    )
    missing = sorted(name for name in pins if name not in have)
    if moved:
        print(f"differ from {lock.name}: " + ", ".join(moved))
    else:
        print(f"every installed distribution is the version {lock.name} pins")
    if missing:
        print(f"in {lock.name} but not installed here: " + ", ".join(missing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
