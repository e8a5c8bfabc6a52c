"""No ``asyncio.wait_for(<something>.wait(), t)`` in the product's code.

On Python 3.11 (the oldest coterie runs on) ``asyncio.wait_for`` returns the inner
result when its task is cancelled in the same breath as the awaited event is set: the
cancellation is lost. A loop that waits that way and is cancelled to stop beats on,
and whoever awaits it waits forever (a ``coterie run`` on PostgreSQL hung on SIGTERM
that way: its heartbeat, woken by another process's NOTIFY as it stopped). Wait with
``async with asyncio.timeout(t): await event.wait()`` instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = {"tests", "benchmarks", "migrations"}


def _waits_through_wait_for(source: str) -> list[int]:
    """The lines of ``asyncio.wait_for(x.wait(), ...)`` calls in ``source``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "wait_for"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "asyncio"
            and node.args
        ):
            continue
        inner = node.args[0]
        if (
            isinstance(inner, ast.Call)
            and isinstance(inner.func, ast.Attribute)
            and inner.func.attr == "wait"
        ):
            lines.append(node.lineno)
    return lines


def test_no_event_is_awaited_through_wait_for() -> None:
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in NOT_SHIPPED or rel.parts[0].startswith("."):
            continue
        found += [f"{rel}:{n}" for n in _waits_through_wait_for(path.read_text("utf-8"))]
    assert found == []


def test_the_scan_finds_the_pattern_and_not_its_replacement() -> None:
    lost = "import asyncio\nasync def f(e):\n    await asyncio.wait_for(e.wait(), 5)\n"
    kept = (
        "import asyncio\nasync def f(e):\n"
        "    async with asyncio.timeout(5):\n        await e.wait()\n"
    )
    assert _waits_through_wait_for(lost) == [3]
    assert _waits_through_wait_for(kept) == []
