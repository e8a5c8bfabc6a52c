"""Memory end to end (issue 16): the real composition root (``build_app`` on SQLite, a
fake clock), the real cogs (chat, /memory, /mydata, /forgetme, /config), the real
discord.py client against the fake Discord; only the model is scripted.

alice tells the assistant a fact -> ``remember`` runs, the answer ends "Saved: ..." (the
delivery's line, not the model's) -> the next day, a new conversation: the model's
request has the fact for alice, not for bob, not in alice's DMs, and not after
``/memory forget-all`` or ``/forgetme``; a persona without the grant never sees the tools.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.services.chat import ChatOutcome, ChatService
from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Caller, Privilege
from executor.models.base import ModelRequest
from executor.testing import FakeClock, ScriptedModel, ScriptedTiers, call
from memory import MEMORY_TOOLS
from personas.model import Persona
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot
from tests.fakediscord.server import Call, FakeInteraction

EPHEMERAL = 64
FACT = "Alice plays the cello in the city orchestra"
COGS = ("commands.chat", "commands.memory", "commands.privacy", "commands.config")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def app(tmp_path: Path, clock: FakeClock) -> AsyncIterator[tuple[App, ScriptedModel]]:
    model = ScriptedModel()
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        budget_default_usd=1.0,
    )
    built = await build_app(settings, resolver=ScriptedTiers(model), clock=clock)
    try:
        yield built, model
    finally:
        await built.close()


@pytest.fixture
def bot_factory(app: tuple[App, ScriptedModel]) -> BotFactory:
    def make(fake: FakeDiscord) -> Any:
        return coterie_bot(fake, app=app[0], extensions=COGS)

    return make


@pytest.fixture
def answered(app: tuple[App, ScriptedModel]) -> asyncio.Queue[ChatOutcome | None]:
    """Each chat the app answers, once its answer is delivered (its last edit made)."""
    the_app, _ = app
    done: asyncio.Queue[ChatOutcome | None] = asyncio.Queue()
    original = ChatService.answer

    async def answer(msg: Any, surface: Any) -> ChatOutcome | None:
        outcome = None
        try:
            outcome = await original(the_app.chat, msg, surface)
            return outcome
        finally:
            await done.put(outcome)  # None: it failed (the test says so)

    the_app.chat.answer = answer  # type: ignore[method-assign]
    return done


def ids(fake: FakeDiscord, who: str) -> str:
    return str(fake.user(who)["id"])


def last_answer(fake: FakeDiscord, since: int) -> str:
    """The answer's text as last posted or edited (a persona speaks by webhook)."""
    calls = [
        c
        for c in fake.calls[since:]
        if c.method in ("POST", "PATCH") and c.path.startswith("/webhooks/") and c.json
    ]
    assert calls, "no answer was posted"
    content: str = calls[-1].json.get("content") or ""
    return content


async def chat(
    fake: FakeDiscord,
    answered: asyncio.Queue[ChatOutcome | None],
    text: str,
    *,
    who: str = "alice",
    channel_id: int | None = None,
) -> tuple[ChatOutcome, str]:
    since = len(fake.calls)
    dm = channel_id is not None and channel_id != fake.guild.channel_id("general")
    await fake.dispatch_message(
        text if dm else f"<@{fake.bot_user['id']}> {text}",
        author=who,
        channel_id=channel_id,
        mentions=[] if dm else ["bot"],
    )
    outcome = await answered.get()
    assert outcome is not None and outcome.result.ok, outcome
    if dm:
        posted = [c for c in fake.calls[since:] if c.method in ("POST", "PATCH") and c.json]
        return outcome, (posted[-1].json.get("content") or "") if posted else ""
    return outcome, last_answer(fake, since)


def system_of(request: ModelRequest) -> str:
    return request.messages[0].text if request.messages[0].role == "system" else ""


def tools_of(request: ModelRequest) -> set[str]:
    return {t.name for t in request.tools}


async def slash(
    fake: FakeDiscord, sub: str, options: dict[str, Any] | None = None, *, user: str = "alice"
) -> tuple[FakeInteraction, Call]:
    types = {bool: 5, int: 4, str: 3}
    listed = [{"name": k, "type": types[type(v)], "value": v} for k, v in (options or {}).items()]
    inter = await fake.dispatch_slash("memory", listed, subcommand=sub, user=user)
    return inter, await fake.wait_for_interaction_response(inter)


def buttons(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["label"]: b for row in message.get("components") or [] for b in row["components"]}


async def confirm_with(fake: FakeDiscord, ask: Call, label: str, *, user: str = "alice") -> None:
    message = ask.response["resource"]["message"]
    click = await fake.dispatch_component(
        buttons(message)[label]["custom_id"], int(message["id"]), user=user
    )
    await fake.wait_for_interaction_response(click)


async def tell_alice_fact(
    fake: FakeDiscord,
    model: ScriptedModel,
    answered: asyncio.Queue[ChatOutcome | None],
) -> str:
    model.push(call("remember", note=FACT), "Noted: I will remember that.")
    _, shown = await chat(fake, answered, "please remember that I play the cello in the orchestra")
    return shown


async def test_a_fact_is_remembered_for_its_member_persona_and_place_only(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    answered: asyncio.Queue[ChatOutcome | None],
    clock: FakeClock,
) -> None:
    fake, (the_app, model) = fake_discord, app
    alice = ids(fake, "alice")

    # The assistant has the memory tools, and its prompt says how to use them.
    shown = await tell_alice_fact(fake, model, answered)
    first = model.requests[0]
    assert set(MEMORY_TOOLS) <= tools_of(first) and "`remember`" in system_of(first)
    # The tool ran (the audit has it), and the delivery, not the model, says so.
    notes = await the_app.memory.notes(alice)
    assert [(n.text, n.persona, n.place) for n in notes] == [
        (FACT, "assistant", f"guild:{fake.guild.id}")
    ]
    assert shown.startswith("Noted: I will remember that.")
    assert f"-# Saved: {FACT} (#{notes[0].id}" in shown
    await the_app.audit.flush()
    detail = await the_app.audit_queries.get_run(notes[0].run_id)
    assert detail is not None and [t.name for t in detail.tool_calls] == ["remember"]
    assert notes[0].created_at == clock.now()

    # The next day, a new conversation: the fact is in alice's prompt.
    await clock.advance(24 * 3600)
    model.push("You play the cello.")
    _, shown = await chat(fake, answered, "what instrument do I play?")
    assert FACT in system_of(model.requests[-1]) and f"[#{notes[0].id}]" in system_of(
        model.requests[-1]
    )
    assert "Saved:" not in shown  # nothing was saved this time

    # Not in bob's.
    model.push("I don't know.")
    await chat(fake, answered, "what instrument does alice play?", who="bob")
    assert "cello" not in system_of(model.requests[-1])

    # Not in alice's DMs (another place).
    model.push("I don't know.")
    dm = int(fake.open_dm("alice")["id"])
    await chat(fake, answered, "what instrument do I play?", channel_id=dm)
    assert "cello" not in system_of(model.requests[-1])
    assert set(MEMORY_TOOLS) <= tools_of(model.requests[-1])  # DMs remember on their own

    # Not for another persona (notes are per persona unless the guild shares them).
    model.push("No idea.")
    await chat(fake, answered, "researcher: what instrument do I play?")
    assert "cello" not in system_of(model.requests[-1])


async def test_a_persona_without_the_grant_never_sees_the_tools_or_the_notes(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    answered: asyncio.Queue[ChatOutcome | None],
) -> None:
    fake, (the_app, model) = fake_discord, app
    await tell_alice_fact(fake, model, answered)
    admin = Caller(user_id="1", display_name="admin", privilege=Privilege.ADMIN)
    await the_app.personas.create(
        str(fake.guild.id),
        Persona(name="plain", system_prompt="You answer plainly.", tools=("current_time",)),
        by=admin,
    )
    model.push("Hello.")
    await chat(fake, answered, "plain: what instrument do I play?")
    request = model.requests[-1]
    assert not set(MEMORY_TOOLS) & tools_of(request)
    assert "cello" not in system_of(request)


async def test_forget_all_and_forgetme_take_the_fact_out_of_the_prompt(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    answered: asyncio.Queue[ChatOutcome | None],
) -> None:
    fake, (the_app, model) = fake_discord, app
    alice = ids(fake, "alice")
    await tell_alice_fact(fake, model, answered)

    # /memory list shows it to her, privately.
    _, listed = await slash(fake, "list")
    data = listed.json["data"]
    assert data["flags"] & EPHEMERAL and FACT in data["embeds"][0]["description"]

    # /memory forget-all, confirmed.
    inter, ask = await slash(fake, "forget-all")
    assert ask.json["data"]["flags"] & EPHEMERAL and "1 note(s)" in ask.json["data"]["content"]
    await confirm_with(fake, ask, "Delete them")
    done = await fake.wait_for_call("POST", rf"/webhooks/{fake.application_id}/{inter.token}")
    assert done.json["content"] == "Done: 1 note(s) forgotten."
    assert await the_app.memory.count(alice) == 0
    model.push("I don't know.")
    await chat(fake, answered, "what instrument do I play?")
    assert "cello" not in system_of(model.requests[-1])

    # Told again, then /forgetme: gone too.
    await tell_alice_fact(fake, model, answered)
    assert await the_app.memory.count(alice) == 1
    inter = await fake.dispatch_slash("forgetme", {}, user="alice")
    ask = await fake.wait_for_interaction_response(inter)
    assert "remember about you" in ask.json["data"]["content"]
    await confirm_with(fake, ask, "Delete my data")
    done = await fake.wait_for_call("POST", rf"/webhooks/{fake.application_id}/{inter.token}")
    assert "memory notes: 1" in done.json["content"]
    model.push("I don't know.")
    await chat(fake, answered, "what instrument do I play?")
    assert "cello" not in system_of(model.requests[-1])


async def test_memory_off_for_the_member_or_the_guild_hides_the_tools_and_the_notes(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    answered: asyncio.Queue[ChatOutcome | None],
) -> None:
    fake, (_, model) = fake_discord, app
    await tell_alice_fact(fake, model, answered)

    _, said = await slash(fake, "off")
    assert "Memory is off for you" in said.json["data"]["content"]
    model.push("Hello.")
    await chat(fake, answered, "what instrument do I play?")
    assert "cello" not in system_of(model.requests[-1])
    assert not set(MEMORY_TOOLS) & tools_of(model.requests[-1])
    await slash(fake, "on")

    # The guild turns memory off: nobody's notes, no tools.
    inter = await fake.dispatch_slash(
        "config", [{"name": "memory", "type": 5, "value": False}], subcommand="set", user="admin"
    )
    await fake.wait_for_interaction_response(inter)
    model.push("Hello.")
    await chat(fake, answered, "what instrument do I play?")
    assert "cello" not in system_of(model.requests[-1])
    assert not set(MEMORY_TOOLS) & tools_of(model.requests[-1])


async def test_a_guild_can_share_notes_across_personas_and_ask_to_confirm_each_save(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    answered: asyncio.Queue[ChatOutcome | None],
) -> None:
    fake, (the_app, model) = fake_discord, app
    alice = ids(fake, "alice")
    await tell_alice_fact(fake, model, answered)
    inter = await fake.dispatch_slash(
        "config",
        [
            {"name": "memory_shared", "type": 5, "value": True},
            {"name": "memory_confirm", "type": 5, "value": True},
        ],
        subcommand="set",
        user="admin",
    )
    await fake.wait_for_interaction_response(inter)

    # Shared: the researcher knows what alice told the assistant.
    model.push("You play the cello.")
    await chat(fake, answered, "researcher: what instrument do I play?")
    assert FACT in system_of(model.requests[-1])

    # Confirm: the save waits for alice's button; Deny keeps nothing.
    since = len(fake.calls)
    model.push(call("remember", note="Alice is vegan"), "Noted.")
    await fake.dispatch_message(
        f"<@{fake.bot_user['id']}> remember I am vegan", author="alice", mentions=["bot"]
    )
    ask = await fake.wait_for_call(
        "POST",
        r"/channels/{id}/messages",
        predicate=lambda c: "remember" in (c.json.get("content") or ""),
        since=since,
    )
    assert "Alice is vegan" in ask.json["content"]
    message = ask.response
    click = await fake.dispatch_component(
        buttons(message)["Deny"]["custom_id"], int(message["id"]), user="alice"
    )
    await fake.wait_for_interaction_response(click)
    outcome = await answered.get()
    assert outcome is not None and outcome.result.ok
    assert "did not confirm" in model.requests[-1].messages[-1].tool_results[0].content
    assert [n.text for n in await the_app.memory.notes(alice)] == [FACT]


async def test_mydata_is_a_json_file_of_everything_kept_about_the_member(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    answered: asyncio.Queue[ChatOutcome | None],
) -> None:
    fake, (the_app, model) = fake_discord, app
    await tell_alice_fact(fake, model, answered)
    await the_app.audit.flush()
    inter = await fake.dispatch_slash("mydata", {}, user="alice")
    first = await fake.wait_for_interaction_response(inter)
    assert first.json["data"]["flags"] & EPHEMERAL  # deferred, privately
    sent = await fake.wait_for_call("POST", rf"/webhooks/{fake.application_id}/{inter.token}")
    assert sent.json["flags"] & EPHEMERAL
    (file,) = sent.files
    data = json.loads(file.content)
    assert data["user_id"] == ids(fake, "alice")
    parts = data["data"]
    assert [n["text"] for n in parts["memory notes"]["notes"]] == [FACT]
    (run,) = parts["audit runs"]
    assert [t["name"] for t in run["tool_calls"]] == ["remember"]
    assert set(parts["budget"]) >= {"limit", "charges", "grants_received"}
    assert {"personas", "skills and schedules", "thread bindings"} <= set(parts)
    # bob's export has nothing of alice's.
    bobs = await the_app.deletion.export(ids(fake, "bob"))
    assert FACT not in json.dumps(bobs)
    # /memory export: her notes alone, as a file, privately.
    _, exported = await slash(fake, "export")
    assert exported.json["data"]["flags"] & EPHEMERAL
    (notes_file,) = exported.files
    assert [n["text"] for n in json.loads(notes_file.content)["notes"]] == [FACT]


async def test_lore_is_for_admins_and_every_member_and_admins_see_counts_not_contents(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    answered: asyncio.Queue[ChatOutcome | None],
) -> None:
    fake, (the_app, model) = fake_discord, app
    alice = ids(fake, "alice")
    lore = {"persona": "assistant", "text": "Movie night is on Fridays at 8pm"}

    # A member may not write lore (checked on the server side).
    inter = await fake.dispatch_slash(
        "memory",
        [{"name": k, "type": 3, "value": v} for k, v in lore.items()],
        group="lore",
        subcommand="add",
        user="alice",
    )
    refused = await fake.wait_for_interaction_response(inter)
    assert "Only a server admin" in refused.json["data"]["content"]
    assert await the_app.memory.lore(str(fake.guild.id)) == []
    inter = await fake.dispatch_slash(
        "memory",
        [{"name": k, "type": 3, "value": v} for k, v in lore.items()],
        group="lore",
        subcommand="add",
        user="admin",
    )
    added = await fake.wait_for_interaction_response(inter)
    assert added.json["data"]["content"].startswith("Lore #")

    # Every member's conversation with that persona has it.
    model.push("Fridays.")
    await chat(fake, answered, "when is movie night?", who="bob")
    assert "Movie night is on Fridays" in system_of(model.requests[-1])

    # Admins see how many notes, never what they say.
    await tell_alice_fact(fake, model, answered)
    _, counted = await slash(fake, "members", user="admin")
    text = json.dumps(counted.json["data"])
    assert f"<@{alice}>: 1 note(s)" in text and "cello" not in text
    _, refused_call = await slash(fake, "members", user="alice")
    assert "Only a server admin" in refused_call.json["data"]["content"]

    # A note's option completes with the caller's own notes only; bob cannot open hers.
    (note,) = await the_app.memory.notes(alice)
    for who, expected in (("alice", [note.id]), ("bob", [])):
        inter = await fake.dispatch_autocomplete("memory", "note", "", user=who, subcommand="show")
        got = await fake.wait_for_interaction_response(inter)
        assert [c["value"] for c in got.json["data"]["choices"]] == expected
    _, shown = await slash(fake, "show", {"note": note.id}, user="bob")
    assert f"no note #{note.id} of yours" in shown.json["data"]["content"]
    _, shown = await slash(fake, "show", {"note": note.id}, user="alice")
    assert shown.json["data"]["embeds"][0]["description"] == FACT
