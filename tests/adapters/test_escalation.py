"""DiscordEscalator with a fake sender: the admin channel's message, or only a log line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest
from sqlmodel import SQLModel

import adapters.storage.tables  # noqa: F401  (registers the tables)
from adapters.discord.escalation import DiscordEscalator, render_escalation
from adapters.storage.db import Database
from adapters.storage.guild_settings import SqlGuildSettings
from adapters.storage.tables import GuildSettings
from executor.agent import Caller
from executor.ports import Escalation, Escalator


class FakeSender:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[int, str]] = []
        self.fail = fail

    async def send(self, channel_id: int, content: str) -> None:
        if self.fail:
            raise discord.DiscordServerError(_Resp(), "down")  # type: ignore[arg-type,unused-ignore]
        self.sent.append((channel_id, content))


class _Resp:
    status = 503
    reason = "Service Unavailable"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.open(f"sqlite+aiosqlite:///{tmp_path / 'esc.db'}")
    async with database.engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    async with database.sessions() as s:
        s.add(GuildSettings(guild_id="10", admin_channel_id="555"))
        s.add(GuildSettings(guild_id="11", default_persona="assistant"))
        await s.commit()
    yield database
    await database.close()


def escalation(guild_id: str | None = "10", reason: str = "went in circles") -> Escalation:
    return Escalation(
        run_id="run-abc",
        agent="researcher",
        caller=Caller(user_id="42", display_name="Alice", guild_id=guild_id),
        action="kill",
        reason=reason,
        elapsed_s=12.345,
        steps=3,
    )


async def test_posts_to_the_guild_admin_channel(db: Database) -> None:
    sender = FakeSender()
    esc = DiscordEscalator(None, SqlGuildSettings(db.sessions), sender=sender)
    assert isinstance(esc, Escalator)
    await esc.escalate(escalation())
    [(channel, text)] = sender.sent
    assert channel == 555
    assert "killed" in text and "`run-abc`" in text and "researcher" in text
    assert "<@42>" in text and "Alice" in text
    assert "went in circles" in text and "12.3 s" in text and "3 steps" in text


@pytest.mark.parametrize("guild_id", [None, "11", "99"])
async def test_without_an_admin_channel_only_logs(
    db: Database, guild_id: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    sender = FakeSender()
    caplog.set_level("INFO", logger="adapters.discord.escalation")
    await DiscordEscalator(None, SqlGuildSettings(db.sessions), sender=sender).escalate(
        escalation(guild_id)
    )
    assert sender.sent == []
    assert "no admin channel" in caplog.text


async def test_a_failed_post_is_logged_not_raised(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await DiscordEscalator(
        None, SqlGuildSettings(db.sessions), sender=FakeSender(fail=True)
    ).escalate(escalation())
    assert "could not post run run-abc" in caplog.text


def test_message_is_bounded_and_one_line_reason() -> None:
    text = render_escalation(escalation(reason="a\n\nb " + "x" * 3000))
    assert len(text) <= 2000
    assert "Reason: a b x" in text
