"""What build_app wires that no single unit shows."""

from __future__ import annotations

from pathlib import Path

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


async def test_the_start_reads_the_message_paths_statements_once_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """Issue 19: SQLAlchemy builds each statement on first use; the start does that for
    a member's message (guild and channel settings, thread, persona, budget) so the
    first message after it pays no more than the next."""
    from sqlalchemy import event, text

    settings = Settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    app = await build_app(settings, resolver=ScriptedTiers(ScriptedModel()))
    try:
        seen: list[str] = []
        event.listen(
            app.db.engine.sync_engine,
            "before_cursor_execute",
            lambda _c, _cur, statement, *_: seen.append(statement),
        )
        await app.warm_storage()
        assert {s.split()[0].upper() for s in seen} <= {"SELECT", "BEGIN", "PRAGMA"}  # reads
        tables = ("guild_settings", "channel_settings", "thread_bindings", "personas")
        for table in (*tables, "budget_ledger"):
            assert any(f"FROM {table}" in s for s in seen), table
        async with app.db.engine.connect() as conn:
            for table in (*tables, "budget_members", "budget_ledger", "budget_reservations"):
                count = (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar()
                assert count == 0, table
        # The message path's reads then come from the caches the warm-up filled.
        seen.clear()
        assert await app.personas.find(None, "assistant") is not None
        assert seen == []
    finally:
        await app.close()
