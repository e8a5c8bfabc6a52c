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
from executor.testing import ScriptedModel, ScriptedTiers


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


async def test_memory_is_wired_with_its_settings_and_purges_while_the_app_runs(
    tmp_path: Path,
) -> None:
    from executor.testing import FakeClock
    from memory import MEMORY_TOOLS, Scope

    clock = FakeClock()
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
        memory_retention_days=1,
        memory_max_notes=7,
        memory_prompt_tokens=100,
    )
    app = await build_app(settings, resolver=ScriptedTiers(ScriptedModel()), clock=clock)
    try:
        assert set(MEMORY_TOOLS) <= set(app.tools.names)
        assert app.memory.caps.max_notes == 7 and app.memory.prompt_tokens == 100
        assert app.chat.memory is app.memory and app.memory_store in app.member_data()
        await app.memory_store.add(Scope("u1", "assistant", "dm"), "old", caps=app.memory.caps)
        await app.start()
        await clock.wait_for_sleepers(1)  # purged once (nothing was old), then waits
        assert await app.memory_store.count("u1") == 1
        for _ in range(25):  # a day and an hour: the hourly purge comes round
            await clock.advance(3600)
            await clock.wait_for_sleepers(1)  # ... purged, and waits again
        assert await app.memory_store.count("u1") == 0
    finally:
        await app.close()
    assert app._background == []


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
