"""What every start pays: no provider SDK without its key, and no Alembic when the
schema is already current (it costs a quarter of a second per start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adapters.storage.db import Database, _head_revision, _plain_head
from tests.lifecycle.conftest import ROOT


def test_the_plain_head_is_alembics_head() -> None:
    assert _plain_head() == _head_revision()


async def test_an_upgrade_at_head_needs_no_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    db = Database.open(url)
    try:
        first = await db.upgrade()
        assert first.up_to_date
    finally:
        await db.close()
    code = (
        "import asyncio, sys\n"
        "from adapters.storage.db import Database\n"
        "async def main():\n"
        f"    db = Database.open({url!r})\n"
        "    version = await db.upgrade()\n"
        "    await db.close()\n"
        "    print(version.current, 'alembic' in sys.modules)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    ).stdout.split()
    assert out == [first.current, "False"]


def test_only_a_configured_providers_sdk_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from bot.app import build_resolver\n"
        "from bot.settings import Settings\n"
        "_, _, tiers = build_resolver(Settings(_env_file=None), {'OPENAI_API_KEY': 'sk-x'})\n"
        "for tier in tiers.tiers:\n"
        "    tiers.resolve(tier)\n"
        "print('anthropic' in sys.modules, 'openai' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    assert out == ["False", "True"]
