"""``--before REV`` in the benchmark scripts: a commit's code, extracted into a
directory of the caller's (``git archive``; the worktree is left alone).

Imported as ``from _revision import checkout``: a script run as ``python
benchmarks/NAME.py`` has this directory first on ``sys.path``, also in its child
processes that measure another commit's code (``--root DIR``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def checkout(rev: str, into: Path) -> Path:
    """The code of commit ``rev``, extracted into ``into``; ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(_ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into
