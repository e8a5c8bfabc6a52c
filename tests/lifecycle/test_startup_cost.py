"""What every start pays: no provider SDK without its key, and no Alembic when the
schema is already current (it costs a quarter of a second per start); the SDKs a
start will need are imported in a thread while the rest starts, and only by the
verbs that run a model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapters.storage.db import Database
from adapters.storage.db.schema import head_revision, plain_head
from tests.lifecycle.conftest import ROOT


def test_the_plain_head_is_alembics_head() -> None:
    assert plain_head() == head_revision()


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


_WARM = """
import asyncio, sys, threading
from bot.app import build_app
from bot.settings import Settings

where = []


class Spy:
    # Records which thread imports the OpenAI provider module; finds nothing itself.
    def find_spec(self, name, path=None, target=None):
        if name == "executor.models.openai":
            where.append(threading.current_thread() is threading.main_thread())
        return None


sys.meta_path.insert(0, Spy())


async def main():
    app = await build_app(Settings(_env_file=None), warm=WARM)
    try:
        await app.warm_models()
        built = sorted(app.resolver._models)
    finally:
        await app.close()
    print("main" if where == [True] else "thread" if where == [False] else "none", built)


asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("warm", "expected"),
    [
        (True, "thread ['fast', 'smart', 'standard']"),
        ("[None]", "thread ['standard']"),
        (False, "none []"),
    ],
)
def test_the_configured_sdk_is_imported_in_a_thread_when_asked(
    tmp_path: Path, warm: object, expected: str
) -> None:
    env = {
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "OPENAI_API_KEY": "sk-x",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
    }
    out = subprocess.run(
        [sys.executable, "-c", _WARM.replace("WARM", str(warm))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == expected


def test_httpx_does_not_bring_its_command_line_client() -> None:
    code = (
        "import contextlib, sys\n"
        "from bot.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main(['--version'])\n"
        "import httpx\n"
        "print(httpx.Client is not None, 'click' in sys.modules, 'rich' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.split()[-3:] == ["True", "False", "False"]


_LEAN = """
import asyncio, sys
from bot.app import build_app
from bot.settings import Settings


async def main():
    app = await build_app(Settings(_env_file=None), scheduler=False)
    try:
        try:
            app.scheduler
        except RuntimeError:
            print("no scheduler")
        await app.start()  # what `coterie run` calls; nothing to start here
    finally:
        await app.close()
    print("skills.scheduler" in sys.modules, "apscheduler.schedulers" in sys.modules,
          "executor.tools.search" in sys.modules)


asyncio.run(main())
"""


def test_an_app_without_a_scheduler_imports_neither_it_nor_an_unconfigured_search(
    tmp_path: Path,
) -> None:
    """`coterie ask` and `chat` never fire a slot: their app has no scheduler (nor
    APScheduler's schedulers; its cron triggers parse schedules), and with no search
    provider configured the search module stays out."""
    env = {
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
    }
    out = subprocess.run(
        [sys.executable, "-c", _LEAN],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["no scheduler", "False False False"]
