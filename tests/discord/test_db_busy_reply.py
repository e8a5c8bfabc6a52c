"""A database lock held past the busy timeout, through the real chat cog (issue 12): the
member reads "coterie is busy, try again in a moment" with a reference, never "not
configured" or the server's path; the log has the detail under that reference."""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import SQLModel

import adapters.storage.tables  # noqa: F401  (registers the tables)
import personas.tables  # noqa: F401
from adapters.services.chat import ChatService
from adapters.services.escalation import Escalations
from adapters.storage.audit_sink import SqlAuditSink
from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database, DatabaseLocked
from adapters.storage.guild_settings import SqlGuildSettings
from adapters.storage.threads import SqlThreadStore
from executor.agent import RunnableAgent
from executor.run import Executor
from executor.testing import ScriptedModel
from personas import Persona, PersonaStore, to_runnable
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, NoSkills, coterie_bot
from tests.storage.dbs import sqlite_url

BUSY = re.compile(r"coterie is busy right now; try again in a moment \(ref ([0-9A-F]{6})\)\.")


@dataclass
class BusyApp:
    chat: ChatService
    personas: PersonaStore
    model: ScriptedModel
    db: Database
    guild_settings: SqlGuildSettings
    escalations: Escalations = field(default_factory=Escalations)
    skill_service: NoSkills = field(default_factory=NoSkills)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[BusyApp]:
    db = Database.open(sqlite_url(tmp_path / "c.db"), busy_timeout_ms=100)
    async with db.engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    model = ScriptedModel(["hello"])
    store = PersonaStore(db.sessions, [Persona(name="assistant", system_prompt="You help.")])

    def to_agent(p: Persona) -> RunnableAgent:
        return replace(to_runnable(p), model=model)

    executor = Executor(
        audit=SqlAuditSink(db.sessions),
        budget=SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000),
    )
    chat = ChatService(
        executor=executor, personas=store, threads=SqlThreadStore(db.sessions), to_agent=to_agent
    )
    yield BusyApp(chat, store, model, db, SqlGuildSettings(db.sessions))
    await db.close()


@pytest.fixture
def bot_factory(app: BusyApp) -> BotFactory:
    def make(fake: FakeDiscord) -> Any:
        return coterie_bot(fake, app=app, extensions=("commands.chat",))

    return make


async def test_a_lock_held_past_the_busy_timeout_says_busy_and_logs_the_detail(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: BusyApp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = fake_discord
    caplog.set_level(logging.INFO, logger="coterie")
    path = app.db.sqlite_path
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)  # a sqlite3 shell mid-transaction
    try:
        holder.execute("BEGIN EXCLUSIVE")
        since = len(fake.calls)
        await fake.dispatch_message(f"<@{fake.bot_user['id']}> hi", mentions=["bot"])
        reply = await fake.wait_for_call("POST", r"/channels/{c}/messages", since=since)
    finally:
        holder.close()
    content = reply.json["content"]
    m = BUSY.fullmatch(content)
    assert m is not None, content
    assert str(path) not in content and "configured" not in content
    assert reply.json["allowed_mentions"]["parse"] == []
    logged = [r for r in caplog.records if m.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], DatabaseLocked)
    assert str(path) in str(logged[0].exc_info[1])  # the operator's copy names the file
    assert app.model.requests == []  # nothing ran, nothing was spent
