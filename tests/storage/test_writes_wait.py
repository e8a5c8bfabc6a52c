"""On SQLite, a store's write that reads before it writes begins IMMEDIATE, so another
connection mid-write makes it wait (the busy timeout) instead of failing at once with
"database is locked": a persona's edit, a thread's binding, a guild's or a channel's
settings, while runs write their audit rows. (The memory store's writes: tests/memory.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from adapters.storage.db import IMMEDIATE, Database
from adapters.storage.guild_settings import SqlGuildSettings
from adapters.storage.threads import SqlThreadStore
from executor.agent import Caller, Privilege
from personas import store as persona_store
from personas.model import Persona
from personas.store import PersonaStore
from tests.storage.dbs import writes_after_another_writer

ADMIN = Caller(user_id="900", display_name="admin", privilege=Privilege.ADMIN, guild_id="1")
POET = Persona(
    name="poet",
    description="Writes verse.",
    system_prompt="You write short poems.",
    tier="standard",
)


def test_the_personas_copy_of_immediate_matches_the_storage_layer() -> None:
    # Why: personas may not import adapters, so its store keeps its own copy.
    assert persona_store._IMMEDIATE == IMMEDIATE


async def _persona_edit(db: Database) -> Callable[[], Awaitable[Any]]:
    store = PersonaStore(db.sessions, tiers=("standard",))
    await store.create("1", POET, by=ADMIN)
    return lambda: store.update("1", replace(POET, description="Odes."), by=ADMIN)


async def _thread_rebind(db: Database) -> Callable[[], Awaitable[Any]]:
    store = SqlThreadStore(db.sessions)
    await store.bind(
        thread_id="t1", guild_id="1", channel_id="c1", persona="poet", created_by="100"
    )
    return lambda: store.bind(
        thread_id="t1", guild_id="1", channel_id="c1", persona="assistant", created_by="100"
    )


async def _guild_settings(db: Database) -> Callable[[], Awaitable[Any]]:
    store = SqlGuildSettings(db.sessions)
    return lambda: store.update_guild("1", allow_dms=False)


async def _channel_persona(db: Database) -> Callable[[], Awaitable[Any]]:
    store = SqlGuildSettings(db.sessions)
    return lambda: store.set_channel_persona("1", "c1", "poet")


@pytest.mark.parametrize(
    "prepare",
    [_persona_edit, _thread_rebind, _guild_settings, _channel_persona],
    ids=["persona edit", "thread binding", "guild settings", "channel persona"],
)
async def test_a_write_waits_for_another_writer_instead_of_failing(
    sqlite_db: Database, prepare: Callable[[Database], Awaitable[Callable[[], Awaitable[Any]]]]
) -> None:
    write = await prepare(sqlite_db)
    await writes_after_another_writer(sqlite_db, write)
