"""Chat hardening end to end (real discord.py client, chat cog, fake Discord): failures
render as a short reply with a log reference, critic escalations reach the admin
channel, deleted threads are unbound, a gone webhook falls back, approvals time out."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel

import adapters.storage.tables  # noqa: F401  (registers the tables)
import personas.tables  # noqa: F401
from adapters.services.approval import DeliveryApprover
from adapters.services.chat import ChatService
from adapters.services.escalation import Escalations
from adapters.storage.db import Database
from adapters.storage.guild_settings import SqlGuildSettings
from adapters.storage.tables import GuildSettings
from adapters.storage.threads import SqlThreadStore
from executor.agent import Caller, RunnableAgent
from executor.ports import Escalation
from executor.run import Executor
from executor.testing import ScriptedModel, call
from executor.tools.registry import ToolRegistry, tool
from personas import Persona, PersonaStore, to_runnable
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, NoSkills, coterie_bot

EPHEMERAL = 64
SORRY = re.compile(
    r"Something went wrong on our side; the admins can find it in the log \(ref ([0-9A-F]{6})\)\."
)


class WatchedThreads(SqlThreadStore):
    """The real store, telling the test when a binding was removed."""

    def __init__(self, sessions: Any) -> None:
        super().__init__(sessions)
        self.unbound: asyncio.Queue[str] = asyncio.Queue()

    async def unbind(self, thread_id: str) -> bool:
        gone = await super().unbind(thread_id)
        await self.unbound.put(thread_id)
        return gone


@dataclass
class HardeningApp:
    chat: ChatService
    personas: PersonaStore
    model: ScriptedModel
    db: Database
    threads: WatchedThreads
    guild_settings: SqlGuildSettings
    escalations: Escalations = field(default_factory=Escalations)
    skill_service: NoSkills = field(default_factory=NoSkills)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[HardeningApp]:
    db = Database.open(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    model = ScriptedModel()
    registry = ToolRegistry()

    def delete_everything(target: str) -> str:
        """Deletes the target."""
        return f"deleted {target}"

    registry.add(tool(delete_everything, requires_approval=True))
    store = PersonaStore(
        db.sessions,
        [
            Persona(name="assistant", system_prompt="You help."),
            Persona(name="janitor", system_prompt="You clean.", tools=("delete_everything",)),
        ],
        tools=registry,
    )
    threads = WatchedThreads(db.sessions)

    def to_agent(p: Persona) -> RunnableAgent:
        return replace(to_runnable(p), model=model)

    chat = ChatService(
        executor=Executor(tools=registry, approver=DeliveryApprover()),
        personas=store,
        threads=threads,
        to_agent=to_agent,
    )
    built = HardeningApp(
        chat=chat,
        personas=store,
        model=model,
        db=db,
        threads=threads,
        guild_settings=SqlGuildSettings(db.sessions),
    )
    yield built
    await db.close()


@pytest.fixture
def bot_factory(app: HardeningApp) -> BotFactory:
    def make(fake: FakeDiscord) -> Any:
        return coterie_bot(fake, app=app, extensions=("commands.chat",))

    return make


@pytest.fixture
def cog(discord_bot: Any) -> Any:
    c = discord_bot.get_cog("ChatCog")
    c.delivery_options.edit_interval = 0.0
    return c


def _broken_database(*args: Any, **kwargs: Any) -> Any:
    raise OperationalError("SELECT personas", {}, Exception("database is locked"))


# --- 1. failures ---------------------------------------------------------------------


async def test_a_failing_message_gets_a_short_reply_and_the_log_gets_the_traceback(
    fake_discord: FakeDiscord,
    cog: Any,
    app: HardeningApp,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_discord
    caplog.set_level(logging.INFO, logger="coterie")
    monkeypatch.setattr(app.personas, "find", _broken_database)
    since = len(fake.calls)
    asked = await fake.dispatch_message(f"<@{fake.bot_user['id']}> hi", mentions=["bot"])
    reply = await fake.wait_for_call("POST", r"/channels/{c}/messages", since=since)
    content = reply.json["content"]
    m = SORRY.fullmatch(content)
    assert m is not None, content
    assert "Traceback" not in content and "OperationalError" not in content
    mentions = reply.json["allowed_mentions"]
    assert mentions["parse"] == [] and not mentions.get("users") and not mentions.get("roles")
    assert not mentions.get("replied_user")
    assert str(reply.json["message_reference"]["message_id"]) == asked["id"]
    ref = m.group(1)
    logged = [r for r in caplog.records if ref in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], OperationalError)
    assert app.model.requests == []
    assert fake.unknown_calls == []


async def test_a_failing_slash_chat_after_the_defer_is_an_ephemeral_followup(
    fake_discord: FakeDiscord,
    cog: Any,
    app: HardeningApp,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_discord
    caplog.set_level(logging.INFO, logger="coterie")
    monkeypatch.setattr(app.personas, "find", _broken_database)
    since = len(fake.calls)
    inter = await fake.dispatch_slash("chat", {"prompt": "hi"})
    ack = await fake.wait_for_interaction_response(inter)
    assert ack.json["type"] == 5 and ack.json["data"]["flags"] & EPHEMERAL
    follow = await fake.wait_for_call(
        "POST", rf"/webhooks/{fake.application_id}/{{t}}", since=since
    )
    m = SORRY.fullmatch(follow.json["content"])
    assert m is not None, follow.json["content"]
    assert follow.json["flags"] & EPHEMERAL
    assert follow.json["allowed_mentions"]["parse"] == []
    logged = [r for r in caplog.records if m.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert not fake.find_calls("POST", r"/channels/{c}/messages", since=since)


# --- 2. escalation -------------------------------------------------------------------


async def test_a_critic_kill_is_posted_to_the_admin_channel_without_pings(
    fake_discord: FakeDiscord, discord_bot: Any, app: HardeningApp
) -> None:
    fake = fake_discord
    admin = fake.guild.channel_id("random")
    async with app.db.sessions() as s:
        s.add(GuildSettings(guild_id=str(fake.guild.id), admin_channel_id=str(admin)))
        await s.commit()
    alice = str(fake.user("alice")["id"])
    since = len(fake.calls)
    await app.escalations.escalate(
        Escalation(
            run_id="run-1",
            agent="assistant",
            caller=Caller(user_id=alice, display_name="Alice", guild_id=str(fake.guild.id)),
            action="kill",
            reason="the run passed the critic's hard limit of 1 s; @everyone",
            elapsed_s=1.5,
            steps=2,
        )
    )
    post = await fake.wait_for_call("POST", f"/channels/{admin}/messages", since=since)
    content = post.json["content"]
    assert "killed" in content and "`run-1`" in content and "assistant" in content
    assert f"<@{alice}>" in content and "hard limit" in content and "2 steps" in content
    assert post.json["allowed_mentions"] == {"parse": []} or (
        post.json["allowed_mentions"]["parse"] == []
        and not post.json["allowed_mentions"].get("users")
    )


# --- 3. deleted threads ---------------------------------------------------------------


async def test_deleting_a_bound_thread_unbinds_it(
    fake_discord: FakeDiscord, cog: Any, app: HardeningApp
) -> None:
    fake = fake_discord
    app.model.push("Answer.")
    since = len(fake.calls)
    await fake.dispatch_slash("chat", {"prompt": "owls"})
    made = await fake.wait_for_call("POST", r"/channels/{c}/messages/{m}/threads", since=since)
    thread = made.response
    await fake.wait_for_call(
        "POST",
        r"/webhooks/{id}/{token}",
        predicate=lambda c: c.query.get("thread_id") == thread["id"],
        since=since,
    )
    assert await app.threads.get(thread["id"]) is not None
    await fake.dispatch(
        "THREAD_DELETE",
        {
            "id": thread["id"],
            "guild_id": str(fake.guild.id),
            "parent_id": thread["parent_id"],
            "type": thread["type"],
        },
    )
    assert await app.threads.unbound.get() == thread["id"]
    assert await app.threads.get(thread["id"]) is None


# --- 4. webhook fallback and approval timeout -----------------------------------------


async def test_a_deleted_webhook_falls_back_to_a_named_channel_message(
    fake_discord: FakeDiscord, cog: Any, app: HardeningApp
) -> None:
    fake = fake_discord
    general = fake.guild.channel_id("general")
    app.model.push("One.", "Two.", "Three.")
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> first", mentions=["bot"])
    await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    [hook_id] = list(fake.webhooks)
    fake.webhooks.clear()  # someone deleted the webhook; the cog still has it cached
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> second", mentions=["bot"])
    failed = await fake.wait_for_call("POST", rf"/webhooks/{hook_id}/{{t}}", since=since)
    assert failed.status == 404
    post = await fake.wait_for_call("POST", f"/channels/{general}/messages", since=since)
    assert post.json["content"].startswith("**assistant**\n")
    assert post.json["allowed_mentions"]["parse"] == []
    # The gone webhook was forgotten: the next answer makes a new one and uses it.
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> third", mentions=["bot"])
    await fake.wait_for_call("POST", f"/channels/{general}/webhooks", since=since)
    post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    assert post.status == 200 and post.json["username"] == "assistant"


async def test_an_unanswered_approval_times_out_as_denied_and_the_model_sees_it(
    fake_discord: FakeDiscord, cog: Any, app: HardeningApp
) -> None:
    fake = fake_discord
    cog.delivery_options.approval_timeout = 0.05
    app.model.push(call("delete_everything", target="logs"), "Fine, I left the logs alone.")
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> janitor: clean up", mentions=["bot"])
    ask = await fake.wait_for_call(
        "POST",
        r"/channels/{c}/messages",
        predicate=lambda c: "components" in (c.json or {}),
        since=since,
    )
    timed_out = await fake.wait_for_call(
        "PATCH",
        rf"/channels/{{c}}/messages/{ask.response['id']}",
        predicate=lambda c: "No answer in time: denied." in (c.json or {}).get("content", ""),
        since=since,
    )
    buttons = timed_out.json["components"][0]["components"]
    assert all(b.get("disabled") for b in buttons)
    # Nothing was written before the question, so the answer is its first post.
    await fake.wait_for_any(
        [("POST", r"/webhooks/{id}/{token}"), ("PATCH", r"/webhooks/{id}/{token}/messages/{m}")],
        lambda c: "left the logs alone" in (c.json or {}).get("content", ""),
        since=since,
    )
    tool_msgs = [m for m in app.model.requests[-1].messages if m.tool_results]
    result = tool_msgs[0].tool_results[0]
    assert "deleted logs" not in result.content
    assert "no answer in time" in result.content
