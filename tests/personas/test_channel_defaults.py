"""The ChannelDefaults contract, run against the in-memory default and SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

import adapters.tables
from adapters.channel_defaults import SqlChannelDefaults
from personas.defaults import ChannelDefaults, InMemoryChannelDefaults


@pytest.fixture(params=["memory", "sqlite"])
async def defaults(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ChannelDefaults]:
    if request.param == "memory":
        yield InMemoryChannelDefaults()
        return
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    try:
        yield SqlChannelDefaults(async_sessionmaker(engine, expire_on_commit=False))
    finally:
        await engine.dispose()


async def test_set_get_clear(defaults: ChannelDefaults) -> None:
    assert isinstance(defaults, ChannelDefaults)
    assert await defaults.get("10") is None
    await defaults.set("1", "10", "researcher")
    await defaults.set("1", "11", "reviewer")
    assert await defaults.get("10") == "researcher"
    await defaults.set("1", "10", "assistant")
    assert await defaults.get("10") == "assistant"
    await defaults.set("1", "10", None)
    assert await defaults.get("10") is None
    assert await defaults.get("11") == "reviewer"


async def test_sql_resolve_falls_back_to_the_guild(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        defaults = SqlChannelDefaults(sessions)
        assert await defaults.resolve("1", "10") is None
        async with sessions() as session:
            session.add(adapters.tables.GuildSettings(guild_id="1", default_persona="reviewer"))
            await session.commit()
        assert await defaults.resolve("1", "10") == "reviewer"
        await defaults.set("1", "10", "researcher")
        assert await defaults.resolve("1", "10") == "researcher"
        assert await defaults.resolve(None, None) is None
    finally:
        await engine.dispose()
