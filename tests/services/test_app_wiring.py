"""What build_app wires that no single unit shows."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlmodel import col

from adapters.storage.audit_queries import FORGOTTEN
from adapters.storage.tables import BudgetLedgerEntry
from bot.app import build_app
from bot.settings import Settings
from executor.agent import RunnableAgent
from executor.models.base import ModelProfile
from executor.testing import ScriptedModel
from tests.discord.test_app_e2e import ScriptedTiers


async def test_whether_a_persona_sees_images_comes_from_its_models_profile(tmp_path: Path) -> None:
    blind = ScriptedModel(profile=ModelProfile(provider="local", sees_images=False))
    seeing = ScriptedModel(profile=ModelProfile(provider="anthropic", sees_images=True))
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
    )
    app = await build_app(settings, resolver=ScriptedTiers(blind))
    try:
        assert app.chat.sees_images(RunnableAgent(tier="standard")) is False
        assert app.chat.sees_images(RunnableAgent(model=seeing)) is True
    finally:
        await app.close()


async def test_a_forgotten_members_charges_leave_their_id_once_out_of_the_window(
    tmp_path: Path,
) -> None:
    """At start (and hourly after), the app moves the charges a forgotten member's budget
    kept to the anonymous id once they are out of the 7-day window."""
    settings = Settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    app = await build_app(settings, resolver=ScriptedTiers(ScriptedModel()))
    try:
        now = app.budget.clock.now()
        async with app.db.sessions() as s:
            for days in (1, 8):
                s.add(
                    BudgetLedgerEntry(
                        user_id="424242", at=now - timedelta(days=days), amount_micros=days
                    )
                )
            await s.commit()
        await app.budget.delete_user_data("424242")  # the 8-day-old one goes at once
        async with app.db.sessions() as s:
            s.add(
                BudgetLedgerEntry(
                    user_id="515151", at=now - timedelta(days=8), amount_micros=3, note=FORGOTTEN
                )
            )
            await s.commit()

        await app.start()

        async with app.db.sessions() as s:
            rows = (
                await s.execute(
                    select(col(BudgetLedgerEntry.user_id), col(BudgetLedgerEntry.amount_micros))
                )
            ).all()
        assert sorted(rows) == [("424242", 1), (FORGOTTEN, 3), (FORGOTTEN, 8)]
    finally:
        await app.close()
