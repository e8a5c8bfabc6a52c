"""The GuildSettingsStore contract, run against the in-memory default and SQLite;
and the SQL store's cache (a change through it is seen at once, another writer's
within the TTL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

import adapters.storage.tables
from adapters.services.ports import GuildConfig, GuildSettingsStore, InMemoryGuildSettings
from adapters.storage.guild_settings import SqlGuildSettings


@pytest.fixture(params=["memory", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[GuildSettingsStore]:
    if request.param == "memory":
        yield InMemoryGuildSettings()
        return
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    try:
        yield SqlGuildSettings(async_sessionmaker(engine, expire_on_commit=False))
    finally:
        await engine.dispose()


async def test_channel_persona_set_get_clear(store: GuildSettingsStore) -> None:
    assert isinstance(store, GuildSettingsStore)
    assert await store.channel_persona("10") is None
    await store.set_channel_persona("1", "10", "researcher")
    await store.set_channel_persona("1", "11", "reviewer")
    assert await store.channel_persona("10") == "researcher"
    await store.set_channel_persona("1", "10", "assistant")
    assert await store.channel_persona("10") == "assistant"
    await store.set_channel_persona("1", "10", None)
    assert await store.channel_persona("10") is None
    assert await store.channel_persona("11") == "reviewer"


async def test_a_guild_without_settings_gets_the_defaults(store: GuildSettingsStore) -> None:
    assert await store.guild("1") == GuildConfig(guild_id="1")


async def test_update_guild_sets_and_clears_fields(store: GuildSettingsStore) -> None:
    new = await store.update_guild("1", default_persona="reviewer", admin_channel_id="99")
    assert new == GuildConfig(guild_id="1", default_persona="reviewer", admin_channel_id="99")
    assert await store.guild("1") == new
    cleared = await store.update_guild("1", admin_channel_id=None)
    assert cleared.admin_channel_id is None and cleared.default_persona == "reviewer"
    assert await store.guild("2") == GuildConfig(guild_id="2")
    with pytest.raises(ValueError, match="unknown guild setting"):
        await store.update_guild("1", colour="red")


async def test_sql_cache_sees_its_own_changes_at_once_and_others_within_the_ttl(
    tmp_path: Path,
) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    now = [0.0]
    try:
        store = SqlGuildSettings(sessions, ttl_s=30, monotonic=lambda: now[0])
        assert (await store.guild("1")).default_persona is None
        await store.update_guild("1", default_persona="reviewer")
        assert (await store.guild("1")).default_persona == "reviewer"  # no wait
        # Another process writes behind the cache's back:
        async with sessions() as session:
            row = await session.get(adapters.storage.tables.GuildSettings, "1")
            assert row is not None
            row.default_persona = "researcher"
            session.add(row)
            await session.commit()
        assert (await store.guild("1")).default_persona == "reviewer"  # cached
        now[0] = 31.0
        assert (await store.guild("1")).default_persona == "researcher"
    finally:
        await engine.dispose()
