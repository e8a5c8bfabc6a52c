"""The SQL thread bindings' read cache (issue 19): every message in a thread asks for
its binding, so reads are cached, "not bound" included; a change through the store
is seen at once, another writer's within the TTL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

import adapters.storage.tables  # noqa: F401  (the tables on the metadata)
from adapters.storage.threads import SqlThreadStore


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


def _reads(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    seen: list[str] = []

    def before(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "thread_bindings" in statement:
            seen.append(statement)

    event.listen(sessions.kw["bind"].sync_engine, "before_cursor_execute", before)
    return seen


async def test_reads_are_cached_and_writes_are_seen_at_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    store = SqlThreadStore(sessions)
    reads = _reads(sessions)
    assert await store.get("t1") is None
    assert await store.get("t1") is None
    assert len(reads) == 1  # "not bound" is kept too
    await store.bind(thread_id="t1", guild_id="g", channel_id="c", persona="poet", created_by="u")
    assert (b := await store.get("t1")) is not None and b.persona == "poet"
    await store.bind(thread_id="t1", guild_id="g", channel_id="c", persona="bard", created_by="u")
    assert (b := await store.get("t1")) is not None and b.persona == "bard"
    await store.unbind("t1")
    assert await store.get("t1") is None
    await store.bind(thread_id="t2", guild_id="g", channel_id="c", persona="poet", created_by="u")
    assert await store.get("t2") is not None
    assert await store.delete_user_data("u") == 1
    assert await store.get("t2") is None


async def test_another_writer_is_seen_within_the_ttl(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = [0.0]
    store = SqlThreadStore(sessions, monotonic=lambda: now[0])
    other = SqlThreadStore(sessions)
    assert await store.get("t1") is None
    await other.bind(thread_id="t1", guild_id="g", channel_id="c", persona="poet", created_by="u")
    assert await store.get("t1") is None
    now[0] += store.ttl_s + 1
    assert await store.get("t1") is not None


async def test_a_bind_during_a_read_is_not_hidden(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqlThreadStore(sessions)
    original_get = AsyncSession.get
    raced = False

    async def get_then_bind(self: AsyncSession, *args: Any, **kwargs: Any) -> Any:
        nonlocal raced
        row = await original_get(self, *args, **kwargs)
        if not raced:  # the first read: a bind commits before it returns
            raced = True
            await store.bind(
                thread_id="t1", guild_id="g", channel_id="c", persona="poet", created_by="u"
            )
        return row

    monkeypatch.setattr(AsyncSession, "get", get_then_bind)
    assert await store.get("t1") is None  # what the read saw
    assert await store.get("t1") is not None  # and it was not kept
