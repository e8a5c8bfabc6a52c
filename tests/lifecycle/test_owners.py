"""Ownership on SQLite (one ``coterie run`` per file): a bot restarted after a crash
settles the dead bot's runs at once (it holds the file's lock, so no other bot can be
alive, whatever the dead one's lease says), but never the run of a ``coterie ask``
still running beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from adapters.storage.lock import InstanceLock
from bot.app import build_app
from bot.settings import Settings
from executor.agent import Caller
from executor.testing import ScriptedModel
from tests.conformance.test_audit_sink import started


class _Tiers:
    tiers = ("standard",)
    default_tier = "standard"

    def resolve(self, tier: str | None = None) -> Any:
        return ScriptedModel(["-"])

    def estimate_micros(self, tier: str | None, input_tokens: int, output_tokens: int) -> int:
        return 0


async def test_a_restarted_bot_settles_the_dead_bots_runs_and_not_a_live_askers(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'coterie.db'}"
    settings = Settings(_env_file=None, database_url=url)
    opened = []
    try:
        async with await InstanceLock.acquire(url):
            dead = await build_app(settings, resolver=_Tiers(), instance="bot")
            opened.append(dead)
            asker = await build_app(settings, resolver=_Tiers(), instance="cli")
            opened.append(asker)
            for app, run_id in ((dead, "r-dead"), (asker, "r-ask")):
                await app.budget.reserve(Caller(user_id="u"), run_id, 1_000)
                await app.audit.record(started(run_id))
                await app.audit.flush()
        # The bot is killed (the lock goes with its process; its row, its lease and its
        # run stay) and restarted a moment later: its lease has not expired yet.
        async with await InstanceLock.acquire(url):
            again = await build_app(settings, resolver=_Tiers(), recover=True, instance="bot")
            opened.append(again)
            async with again.db.engine.connect() as conn:
                rows = (await conn.execute(text("SELECT run_id, status FROM audit_runs"))).all()
                runs = {str(r[0]): str(r[1]) for r in rows}
                reserved = {
                    r[0] for r in await conn.execute(text("SELECT run_id FROM budget_reservations"))
                }
            assert runs == {"r-dead": "interrupted", "r-ask": "running"}
            assert reserved == {"r-ask"}
    finally:
        for app in reversed(opened):
            await app.close()
