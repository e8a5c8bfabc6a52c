"""Chat end to end: the real discord.py client, the chat cog, the fake Discord."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import SQLModel

import adapters.storage.tables  # noqa: F401  (registers the tables)
import personas.tables  # noqa: F401
from adapters.services.approval import DeliveryApprover
from adapters.services.chat import ChatService
from adapters.services.escalation import Escalations
from adapters.services.ports import InMemoryGuildSettings
from adapters.storage.db import Database
from adapters.storage.threads import SqlThreadStore
from executor.agent import Caller, RunnableAgent
from executor.errors import BudgetDetails, BudgetExceeded
from executor.ports import Reservation
from executor.run import Executor
from executor.testing import Reply, ScriptedModel, call
from executor.tools.registry import ToolRegistry, tool
from personas import Persona, PersonaStore, to_runnable
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, NoSkills, coterie_bot

EPHEMERAL = 64


class RefusingBudget:
    async def reserve(self, caller: Caller, run_id: str, estimate_micros: int) -> Reservation:
        raise BudgetExceeded(
            BudgetDetails(
                spent_micros=5_100_000,
                reserved_micros=0,
                estimate_micros=10_000,
                limit_micros=5_000_000,
            )
        )

    async def grow(self, reservation: Reservation, amount_micros: int) -> Reservation:
        return reservation

    async def settle(self, reservation: Reservation, cost_micros: int) -> None:
        return None


@dataclass
class ChatApp:
    chat: ChatService
    personas: PersonaStore
    model: ScriptedModel
    db: Database
    executor: Executor
    guild_settings: InMemoryGuildSettings = field(default_factory=InMemoryGuildSettings)
    escalations: Escalations = field(default_factory=Escalations)
    skill_service: NoSkills = field(default_factory=NoSkills)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
async def chat_app(tmp_path: Path) -> AsyncIterator[ChatApp]:
    db = Database.open(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    model = ScriptedModel()
    registry = ToolRegistry()

    def delete_everything(target: str) -> str:
        """Deletes the target."""
        return f"deleted {target}"

    registry.add(tool(delete_everything, requires_approval=True))
    builtins = [
        Persona(name="assistant", system_prompt="You help."),
        Persona(
            name="researcher",
            system_prompt="You research.",
            avatar_url="https://example.org/r.png",
            tools=("delete_everything",),
        ),
    ]
    store = PersonaStore(db.sessions, builtins, tools=registry)
    executor = Executor(tools=registry, approver=DeliveryApprover())

    def to_agent(p: Persona) -> RunnableAgent:
        return replace(to_runnable(p), model=model)

    chat = ChatService(
        executor=executor, personas=store, threads=SqlThreadStore(db.sessions), to_agent=to_agent
    )
    yield ChatApp(chat=chat, personas=store, model=model, db=db, executor=executor)
    await db.close()


@pytest.fixture
def bot_factory(chat_app: ChatApp) -> BotFactory:
    async def make(fake: FakeDiscord) -> Any:
        bot = coterie_bot(fake, app=chat_app, extensions=("commands.chat",))
        return bot

    return make


@pytest.fixture
def cog(discord_bot: Any) -> Any:
    c = discord_bot.get_cog("ChatCog")
    c.delivery_options.edit_interval = 0.0
    return c


def _webhook_posts(fake: FakeDiscord) -> list[Any]:
    return [
        c
        for c in fake.calls
        if re.fullmatch(r"/webhooks/\d+/[^/]+", c.path)
        and c.method == "POST"
        and int(c.path.split("/")[2]) != fake.application_id
    ]


async def test_mention_streams_a_persona_reply_through_a_webhook(
    fake_discord: FakeDiscord, cog: Any, chat_app: ChatApp
) -> None:
    fake = fake_discord
    chat_app.model.push(Reply(text="Hello there, Alice!", chunks=["Hello", " there", ", Alice!"]))
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> hi", mentions=["bot"])
    post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    assert post.query.get("wait") in ("true", "True", "1")
    assert post.json["username"] == "assistant"
    assert post.json["allowed_mentions"]["parse"] == []
    # Edits follow in order, each a longer prefix of the answer, ending with all of it.
    final = "Hello there, Alice!"
    contents = [post.json["content"]]
    if contents[-1] != final:
        while True:
            patch = await fake.wait_for_call(
                "PATCH", r"/webhooks/{id}/{token}/messages/{m}", since=since
            )
            since = fake.calls.index(patch) + 1
            contents.append(patch.json["content"])
            if contents[-1] == final:
                break
    assert all(final.startswith(c) for c in contents)
    assert [len(c) for c in contents] == sorted(len(c) for c in contents)
    # The model saw the message without the mention, with Alice's name.
    req = chat_app.model.requests[-1]
    assert req.messages[-1].text == "hi"
    assert fake.unknown_calls == []


async def test_persona_prefix_and_reply_chain(
    fake_discord: FakeDiscord, cog: Any, chat_app: ChatApp
) -> None:
    fake = fake_discord
    chat_app.model.push("First answer.", "Second answer.")
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> researcher: find X", mentions=["bot"])
    post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    assert post.json["username"] == "researcher"
    assert post.json["avatar_url"] == "https://example.org/r.png"
    answer_id = int(post.response["id"])
    # A reply to the persona's message continues the conversation, no mention needed.
    since = len(fake.calls)
    await fake.dispatch_message("and Y?", message_reference=answer_id)
    post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    assert post.json["username"] == "researcher"  # the persona replied to answers
    msgs = [m for m in chat_app.model.requests[-1].messages if m.role != "system"]
    assert [m.role for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1].text == "First answer."
    assert msgs[-1].text == "and Y?"


async def test_everyone_written_by_the_model_stays_inert(
    fake_discord: FakeDiscord, cog: Any, chat_app: ChatApp
) -> None:
    fake = fake_discord
    chat_app.model.push("@everyone <@&1> look")
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> ping", mentions=["bot"])
    post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    mentions = post.json["allowed_mentions"]
    assert mentions["parse"] == [] and not mentions.get("users") and not mentions.get("roles")


async def test_long_reply_with_a_code_block_is_split(
    fake_discord: FakeDiscord, cog: Any, chat_app: ChatApp
) -> None:
    fake = fake_discord
    code = "\n".join(f"x_{i} = {i}  # " + "c" * 40 for i in range(60))
    text = (
        "Intro paragraph.\n\n"
        + "Words " * 200
        + "\n\n```python\n"
        + code
        + "\n```\n\n"
        + "End " * 300
    )
    assert len(text) > 5000
    chat_app.model.push(text)
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> code please", mentions=["bot"])
    await chat_app_done(fake, since, chat_app)
    hooks = [c for c in _webhook_posts(fake) if fake.calls.index(c) >= since]
    pieces = [fake.message(int(c.response["id"]))["content"] for c in hooks]
    assert len(pieces) >= 3
    for piece in pieces:
        assert len(piece) <= 2000
        assert len(re.findall(r"^```", piece, flags=re.M)) % 2 == 0
    got = [ln for p in pieces for ln in p.split("\n") if ln.startswith("x_")]
    assert got == code.split("\n")


async def chat_app_done(fake: FakeDiscord, since: int, chat_app: ChatApp) -> None:
    """Wait until the run's last message ends with the final text (no status line)."""
    # The executor's last action is delivery.finish; wait for the model's request then the
    # final push: the last webhook POST/PATCH after the model answered.
    await fake.wait_for_call(
        "POST",
        r"/webhooks/{id}/{token}",
        predicate=lambda c: "End" in (c.json or {}).get("content", ""),
        since=since,
    )


async def test_budget_refusal_says_spent_limit(
    fake_discord: FakeDiscord, cog: Any, chat_app: ChatApp
) -> None:
    fake = fake_discord
    chat_app.executor.budget = RefusingBudget()
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> expensive", mentions=["bot"])
    post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    content = post.json["content"]
    assert "past your 7-day budget" in content
    assert "$5.10" in content and "$5.00" in content
    assert "/budget grant" in content  # how to ask an admin for more
    assert chat_app.model.requests == []


async def test_dm_chat_answers_as_a_normal_message(
    fake_discord: FakeDiscord, cog: Any, chat_app: ChatApp
) -> None:
    fake = fake_discord
    chat_app.model.push("Hi in private.")
    dm = int(fake.open_dm("alice")["id"])
    since = len(fake.calls)
    await fake.dispatch_message("hello bot", channel_id=dm)
    post = await fake.wait_for_call("POST", f"/channels/{dm}/messages", since=since)
    assert post.json["content"].startswith("**assistant**\n")
    assert post.json["allowed_mentions"]["parse"] == []
    assert post.json["message_reference"]["message_id"]
    final = "**assistant**\nHi in private."
    if post.json["content"] != final:
        await fake.wait_for_call(
            "PATCH",
            f"/channels/{dm}/messages/{{m}}",
            predicate=lambda c: c.json.get("content") == final,
            since=since,
        )
    # No name on DM turns.
    assert chat_app.model.requests[-1].messages[-1].name is None


async def test_slash_chat_defers_opens_a_thread_and_continues_there(
    fake_discord: FakeDiscord, cog: Any, chat_app: ChatApp
) -> None:
    fake = fake_discord
    chat_app.model.push("Thread answer one.", "Thread answer two.")
    since = len(fake.calls)
    inter = await fake.dispatch_slash(
        "chat", {"prompt": "Tell me about owls", "persona": "researcher"}
    )
    ack = await fake.wait_for_interaction_response(inter)
    assert ack.json["type"] == 5 and ack.json["data"]["flags"] & EPHEMERAL
    made = await fake.wait_for_call("POST", r"/channels/{c}/messages/{m}/threads", since=since)
    assert made.json["name"] == "Tell me about owls"
    thread_id = int(made.response["id"])
    post = await fake.wait_for_call(
        "POST",
        r"/webhooks/{id}/{token}",
        predicate=lambda c: c.query.get("thread_id") == str(thread_id),
        since=since,
    )
    assert post.json["username"] == "researcher"
    binding = await chat_app.chat.threads.get(str(thread_id))
    assert binding is not None and binding.persona == "researcher"
    # In the thread, no mention is needed; the history includes the first exchange.
    since = len(fake.calls)
    await fake.dispatch_message("What do they eat?", channel_id=thread_id, author="bob")
    await fake.wait_for_call(
        "POST",
        r"/webhooks/{id}/{token}",
        predicate=lambda c: c.query.get("thread_id") == str(thread_id),
        since=since,
    )
    msgs = chat_app.model.requests[-1].messages
    assert msgs[-1].text == "What do they eat?" and msgs[-1].name == "Bob"
    assert any(m.text == "Tell me about owls" for m in msgs)
    assert fake.unknown_calls == []

    # A queue board the bot posted in the thread is not a turn of the conversation.
    chat_app.model.push("Thread answer three.")
    fake.add_message(thread_id, "-# waiting in line: 1. <@42>")
    since = len(fake.calls)
    await fake.dispatch_message("And where do they sleep?", channel_id=thread_id, author="bob")
    await fake.wait_for_call(
        "POST",
        r"/webhooks/{id}/{token}",
        predicate=lambda c: c.query.get("thread_id") == str(thread_id),
        since=since,
    )
    msgs = chat_app.model.requests[-1].messages
    assert any(m.text == "What do they eat?" for m in msgs)
    assert not any("waiting in line" in m.text for m in msgs)


async def test_slash_chat_unknown_persona_is_an_ephemeral_error(
    fake_discord: FakeDiscord, cog: Any, chat_app: ChatApp
) -> None:
    fake = fake_discord
    since = len(fake.calls)
    inter = await fake.dispatch_slash("chat", {"prompt": "hi", "persona": "ghost"})
    ack = await fake.wait_for_interaction_response(inter)
    assert ack.json["type"] == 5 and ack.json["data"]["flags"] & EPHEMERAL
    follow = await fake.wait_for_call(
        "POST", rf"/webhooks/{fake.application_id}/{{t}}", since=since
    )
    assert "Traceback" not in follow.json["content"]
    # Nothing was posted in the channel and no thread was made.
    assert not fake.find_calls("POST", r"/channels/{c}/messages/{m}/threads", since=since)
    assert chat_app.model.requests == []


async def test_approval_buttons_only_the_asker_may_press(
    fake_discord: FakeDiscord, cog: Any, chat_app: ChatApp
) -> None:
    fake = fake_discord
    chat_app.model.push(call("delete_everything", target="logs"), "Done: logs deleted.")
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> researcher: clean up", mentions=["bot"])
    ask = await fake.wait_for_call(
        "POST",
        r"/channels/{c}/messages",
        predicate=lambda c: "components" in (c.json or {}),
        since=since,
    )
    buttons = ask.json["components"][0]["components"]
    approve = next(b for b in buttons if b["label"] == "Approve")
    msg_id = int(ask.response["id"])
    # Bob is not the one who asked.
    inter = await fake.dispatch_component(approve["custom_id"], msg_id, user="bob")
    resp = await fake.wait_for_interaction_response(inter)
    assert resp.json["type"] == 4 and resp.json["data"]["flags"] & EPHEMERAL
    assert "Not yours" in resp.json["data"]["content"]
    inter = await fake.dispatch_component(approve["custom_id"], msg_id, user="alice")
    resp = await fake.wait_for_interaction_response(inter)
    assert resp.json["type"] == 7
    await fake.wait_for_call(
        "PATCH",
        r"/webhooks/{id}/{token}/messages/{m}",
        predicate=lambda c: "logs deleted" in (c.json or {}).get("content", ""),
        since=since,
    )
    tool_msgs = [m for m in chat_app.model.requests[-1].messages if m.tool_results]
    assert tool_msgs[0].tool_results[0].content == "deleted logs"
