"""Admin review end to end: the real composition root (``build_app`` on SQLite), the real
cogs (/config /audit /budget /forgetme and chat), the real discord.py client against the
fake Discord; only the model is scripted.

Covers: every admin command refused, server side, to a member without the permission;
/config applied at once and audited (allowlist, cost footer); /audit list pages for
its owner only; /audit show renders failover, tool calls and critic events of a real
run; the export parses and matches the database; /budget me, set, grant, top; the
chart is a PNG of the chart's size with alt text; the 50 % warning DM;
/forgetme leaves no row naming the member but anonymised audit rows and the bare
budget rows that keep it counting.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.discord.charts import CHART_DPI, CHART_SIZE_IN
from adapters.storage.audit_queries import FORGOTTEN, RunFilter
from adapters.storage.tables import AdminAction
from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Bounds, Caller, Invocation, Privilege, RunnableAgent
from executor.errors import Overloaded
from executor.events import CriticVerdictEvent, RunEvent, RunFinished
from executor.messages import Message, Usage
from executor.models.fallback import FallbackModel
from executor.testing import Reply, ScriptedModel, ScriptedTiers, call
from executor.tools.registry import tool
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot
from tests.fakediscord.server import Call, FakeInteraction
from tests.services.test_deletion import _rows_naming, _rows_naming_beyond_the_budget

EPHEMERAL = 64
MESSAGE, DEFERRED, UPDATE = 4, 5, 7
PNG = b"\x89PNG\r\n\x1a\n"
COGS = (
    "commands.chat",
    "commands.persona",
    "commands.config",
    "commands.audit",
    "commands.budget",
    "commands.privacy",
)
ADMIN_ONLY = "Only a server admin (Manage Server) can use this command."


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[App, ScriptedModel]]:
    model = ScriptedModel()
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        budget_default_usd=1.0,
    )
    built = await build_app(settings, resolver=ScriptedTiers(model))
    try:
        yield built, model
    finally:
        await built.close()


@pytest.fixture
def bot_factory(app: tuple[App, ScriptedModel]) -> BotFactory:
    def make(fake: FakeDiscord) -> Any:
        return coterie_bot(fake, app=app[0], extensions=COGS)

    return make


# --- helpers ---------------------------------------------------------------------------


def member_option(fake: FakeDiscord, name: str, who: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A user option for ``who`` and the ``resolved`` data Discord sends with it."""
    user = fake.user(who)
    uid = str(user["id"])
    member = {k: v for k, v in fake.guild.members[int(uid)].items() if k != "user"}
    return {"name": name, "type": 6, "value": uid}, {
        "users": {uid: user},
        "members": {uid: member},
    }


def role_option(fake: FakeDiscord, name: str, role: str) -> tuple[dict[str, Any], dict[str, Any]]:
    payload = fake.guild.roles[role]
    return {"name": name, "type": 8, "value": str(payload["id"])}, {
        "roles": {str(payload["id"]): payload}
    }


def channel_option(fake: FakeDiscord, name: str, channel: str) -> tuple[dict[str, Any], Any]:
    payload = fake.guild.channels[channel]
    return {"name": name, "type": 7, "value": str(payload["id"])}, {
        "channels": {str(payload["id"]): {**payload, "permissions": "0"}}
    }


def opts(values: dict[str, Any]) -> list[dict[str, Any]]:
    types = {bool: 5, int: 4, float: 10, str: 3}
    return [{"name": k, "type": types[type(v)], "value": v} for k, v in values.items()]


async def slash(
    fake: FakeDiscord,
    group: str,
    sub: str,
    options: list[dict[str, Any]] | dict[str, Any] | None = None,
    *,
    user: str = "admin",
    resolved: dict[str, Any] | None = None,
) -> tuple[FakeInteraction, Call]:
    listed = opts(options) if isinstance(options, dict) else list(options or [])
    inter = await fake.dispatch_slash(group, listed, subcommand=sub, user=user, resolved=resolved)
    return inter, await fake.wait_for_interaction_response(inter)


async def answer(fake: FakeDiscord, inter: FakeInteraction, first: Call) -> dict[str, Any]:
    """The message an interaction answered with: the callback's, or the first followup."""
    if first.json["type"] == MESSAGE:
        data: dict[str, Any] = first.json["data"]
        return data
    followup = await fake.wait_for_call("POST", rf"/webhooks/{fake.application_id}/{inter.token}")
    assert followup.json is not None
    return {**followup.json, "_call": followup, "_message": followup.response}


def text_of(data: dict[str, Any]) -> str:
    parts = [data.get("content") or ""]
    for e in data.get("embeds") or []:
        parts += [e.get("title") or "", e.get("description") or ""]
        parts += [f"{f['name']}: {f['value']}" for f in e.get("fields") or []]
        parts.append((e.get("footer") or {}).get("text") or "")
    return "\n".join(parts)


def buttons(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["label"]: b for row in message.get("components") or [] for b in row["components"]}


async def autocomplete(
    fake: FakeDiscord, group: str, sub: str, option: str, typed: str, *, user: str = "admin"
) -> list[dict[str, Any]]:
    data = {
        "id": str(fake._command_id(group, fake.guild.id)),
        "name": group,
        "type": 1,
        "guild_id": str(fake.guild.id),
        "options": [
            {
                "name": sub,
                "type": 1,
                "options": [{"name": option, "type": 3, "value": typed, "focused": True}],
            }
        ],
    }
    inter = fake._interaction_base(4, data, user, None)
    await fake.dispatch("INTERACTION_CREATE", inter.payload)
    got = await fake.wait_for_interaction_response(inter)
    assert got.json["type"] == 8  # autocomplete result
    choices: list[dict[str, Any]] = got.json["data"]["choices"]
    return choices


async def said_in_webhook(fake: FakeDiscord, text: str, *, since: int) -> str:
    """The content of the persona's message once it says ``text`` (posted or edited)."""

    def says(c: Call) -> bool:
        return text in (c.json or {}).get("content", "")

    found = await fake.wait_for_any(
        [("POST", r"/webhooks/{id}/{token}"), ("PATCH", r"/webhooks/{id}/{token}/messages/{m}")],
        says,
        since=since,
    )
    content: str = found.json["content"]
    return content


class Watch:
    """Observer: run ends and critic verdicts, for waiting without sleeping."""

    def __init__(self) -> None:
        self.finished: asyncio.Queue[RunFinished] = asyncio.Queue()
        self.verdict = asyncio.Event()

    async def on_event(self, event: RunEvent) -> None:
        if isinstance(event, RunFinished):
            await self.finished.put(event)
        if isinstance(event, CriticVerdictEvent):
            self.verdict.set()


async def run_in_guild(
    the_app: App, fake: FakeDiscord, who: str, *, cost: int, text: str = "hi", persona: str = "p"
) -> str:
    user = fake.user(who)
    model = ScriptedModel()
    model.push(Reply(text=text, usage=Usage(input_tokens=5, output_tokens=5, cost_micros=cost)))
    result = await the_app.executor.run(
        RunnableAgent(name=persona, model=model, persona=persona),
        Invocation(
            messages=[Message.user("question")],
            caller=Caller(
                user_id=str(user["id"]),
                display_name=who,
                guild_id=str(fake.guild.id),
                channel_id=str(fake.guild.channel_id("general")),
            ),
            trigger="chat",
        ),
    )
    assert result.ok
    return result.run_id


# --- privilege ---------------------------------------------------------------------------


async def test_a_member_without_the_permission_is_refused_every_admin_command(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    fake = fake_discord
    bob, bob_resolved = member_option(fake, "member", "bob")
    role, role_resolved = role_option(fake, "role", "moderator")
    commands: list[tuple[str, str, list[dict[str, Any]], dict[str, Any] | None]] = [
        ("config", "show", [], None),
        ("config", "set", opts({"cost_footer": True}), None),
        ("config", "reset", opts({"setting": "timezone"}), None),
        ("config", "answer-in", opts({"action": "everywhere"}), None),
        ("config", "role-budget", [role], role_resolved),
        ("audit", "list", [], None),
        ("audit", "show", opts({"run": "abcd"}), None),
        ("audit", "export", [], None),
        ("audit", "actions", [], None),
        ("budget", "show", [bob], bob_resolved),
        ("budget", "set", [bob, *opts({"limit": "100"})], bob_resolved),
        ("budget", "grant", [bob, *opts({"amount": 50.0, "reason": "me"})], bob_resolved),
        ("budget", "top", [], None),
        ("budget", "chart", [bob], bob_resolved),
    ]
    for group, sub, options, resolved in commands:
        # Why the moderator too: Manage Messages is not Manage Server.
        for who in ("alice", "moderator"):
            _, got = await slash(fake, group, sub, options, user=who, resolved=resolved)
            assert got.json["type"] == MESSAGE, (group, sub, got.json)
            data = got.json["data"]
            assert data["flags"] & EPHEMERAL, (group, sub)
            assert data["content"] == ADMIN_ONLY, (group, sub, data["content"])
    # Nothing was changed or recorded.
    async with discord_bot.app.db.sessions() as s:
        from sqlalchemy import func, select

        assert await s.scalar(select(func.count()).select_from(AdminAction)) == 0
    # Manage Server alone is enough (the manager has no Administrator).
    _, got = await slash(fake, "config", "show", user="manager")
    assert got.json["type"] == MESSAGE and "Answers in" in text_of(got.json["data"])
    assert fake.unknown_calls == []


# --- /config ------------------------------------------------------------------------------


async def test_config_applies_at_once_is_audited_and_shapes_the_answers(
    fake_discord: FakeDiscord, discord_bot: Any, app: tuple[App, ScriptedModel]
) -> None:
    fake = fake_discord
    the_app, model = app
    general, resolved = channel_option(fake, "channel", "general")
    _, got = await slash(
        fake, "config", "answer-in", [*opts({"action": "add"}), general], resolved=resolved
    )
    assert "Saved where coterie answers" in text_of(got.json["data"])
    _, got = await slash(fake, "config", "set", {"cost_footer": True, "timezone": "Europe/Paris"})
    shown = text_of(got.json["data"])
    assert "Cost footer: on" in shown and "Europe/Paris" in shown
    assert f"<#{fake.guild.channel_id('general')}>" in shown

    # Not on the list: a mention in #random gets no answer (and costs nothing).
    watch = Watch()
    the_app.executor.observers.append(watch)
    await fake.dispatch_message(
        f"<@{fake.bot_user['id']}> hello?",
        mentions=["bot"],
        channel_id=fake.guild.channel_id("random"),
    )
    # On the list: answered at once, with the cost footer.
    model.push(
        Reply(text="Hello!", usage=Usage(input_tokens=10, output_tokens=3, cost_micros=4_200))
    )
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> hello", mentions=["bot"])
    await watch.finished.get()
    content = await said_in_webhook(fake, "-# $0.0042 · scripted · ", since=since)
    assert content.startswith("Hello!") and content.rstrip().endswith(" s")
    assert len(model.requests) == 1  # the #random mention never reached the model
    random_id = fake.guild.channel_id("random")
    assert not [m for m in fake.history(random_id) if m["author"].get("bot")]

    # /chat outside the list is refused with a sentence, not a traceback.
    inter = await fake.dispatch_slash(
        "chat", {"prompt": "hi"}, user="alice", channel_id=fake.guild.channel_id("random")
    )
    await fake.wait_for_interaction_response(inter)
    refused = await fake.wait_for_call("POST", rf"/webhooks/{fake.application_id}/{inter.token}")
    assert "don't answer in this channel" in refused.json["content"]

    # Each change is in the admin log with who made it.
    page = await the_app.admin_log.list(guild_id=str(fake.guild.id))
    assert [e.action for e in page.entries] == ["config.set", "config.set"]
    admin_id = str(fake.user("admin")["id"])
    assert {e.actor_id for e in page.entries} == {admin_id}
    assert page.entries[0].detail["changes"]["cost_footer"] == {"from": False, "to": True}
    inter, first = await slash(fake, "audit", "actions")
    listed = await answer(fake, inter, first)
    assert "config.set" in text_of(listed) and f"<@{admin_id}>" in text_of(listed)

    # Reset puts the deployment's default back.
    _, got = await slash(fake, "config", "reset", {"setting": "answer_in"})
    assert "every channel" in text_of(got.json["data"])
    assert (await the_app.guild_settings.guild(str(fake.guild.id))).answers_everywhere


async def test_config_rejects_what_cannot_be_used(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    fake = fake_discord
    _, got = await slash(fake, "config", "set", {"timezone": "Mars/Olympus"})
    assert got.json["data"]["flags"] & EPHEMERAL
    assert "not a time zone" in got.json["data"]["content"]
    _, got = await slash(fake, "config", "set", {"default_tier": "enormous"})
    assert "no tier named" in got.json["data"]["content"]
    _, got = await slash(fake, "config", "set", {"default_persona": "nobody"})
    assert "no persona named" in got.json["data"]["content"]


# --- /audit -----------------------------------------------------------------------------


async def test_audit_list_pages_move_and_answer_only_their_owner(
    fake_discord: FakeDiscord, discord_bot: Any, app: tuple[App, ScriptedModel]
) -> None:
    fake = fake_discord
    the_app, _ = app
    for i in range(23):
        await run_in_guild(the_app, fake, "alice", cost=100 + i, persona=f"p{i % 3}")
    inter, first = await slash(fake, "audit", "list")
    assert first.json["type"] == DEFERRED
    data = await answer(fake, inter, first)
    assert data["flags"] & EPHEMERAL
    shown = text_of(data)
    assert shown.count("`ok`") == 10 and "Page 1" in shown
    message = data["_message"]
    assert buttons(message)["Previous"]["disabled"]

    # Someone else is refused privately; the page stays.
    nope = await fake.dispatch_component(
        buttons(message)["Next"]["custom_id"], int(message["id"]), user="manager"
    )
    refused = await fake.wait_for_interaction_response(nope)
    assert refused.json["data"]["flags"] & EPHEMERAL
    assert "not yours" in refused.json["data"]["content"]

    nxt = await fake.dispatch_component(
        buttons(message)["Next"]["custom_id"], int(message["id"]), user="admin"
    )
    await fake.wait_for_interaction_response(nxt)
    edit = await fake.wait_for_call(
        "PATCH", rf"/webhooks/{fake.application_id}/{nxt.token}/messages/@original"
    )
    assert "Page 2" in text_of(edit.json) and text_of(edit.json).count("`ok`") == 10
    stored = fake.find_message(int(message["id"])) or {}
    last = await fake.dispatch_component(
        buttons(stored)["Next"]["custom_id"], int(message["id"]), user="admin"
    )
    await fake.wait_for_interaction_response(last)
    edit = await fake.wait_for_call(
        "PATCH", rf"/webhooks/{fake.application_id}/{last.token}/messages/@original"
    )
    assert "Page 3/3" in text_of(edit.json) and text_of(edit.json).count("`ok`") == 3
    assert buttons(edit.json)["Next"]["disabled"]

    # Filters: one persona only.
    inter, first = await slash(fake, "audit", "list", {"persona": "p1", "since": "1h"})
    listed = text_of(await answer(fake, inter, first))
    assert "**p1**" in listed and "**p0**" not in listed
    assert fake.unknown_calls == []


async def test_audit_show_renders_failover_tool_calls_and_critic_of_a_real_run(
    fake_discord: FakeDiscord, discord_bot: Any, app: tuple[App, ScriptedModel]
) -> None:
    fake = fake_discord
    the_app, _ = app
    watch = Watch()
    the_app.executor.observers.append(watch)

    @tool
    async def lookup(city: str, api_key: str = "") -> str:
        """Looks a city up."""
        return f"{city}: sunny"

    @tool
    async def slow_lookup(city: str) -> str:
        """Waits until the critic has judged the run."""
        await watch.verdict.wait()
        return f"{city}: rain"

    the_app.tools.add(lookup)
    the_app.tools.add(slow_lookup)
    broken = ScriptedModel(name="anthropic:claude-sonnet-4-6")
    broken.push(Overloaded("overloaded", model="anthropic:claude-sonnet-4-6", status=529))
    works = ScriptedModel(name="openai:gpt-5.4")
    works.push(
        Reply(tool_calls=[call("lookup", city="Paris", api_key="sk-secret-123456789012345678")]),
        Reply(tool_calls=[call("slow_lookup", city="Lyon")]),
        Reply(
            text="Paris is sunny, Lyon rainy.",
            usage=Usage(input_tokens=50, output_tokens=9, cost_micros=900),
        ),
    )
    alice = fake.user("alice")
    result = await the_app.executor.run(
        RunnableAgent(
            name="weather",
            persona="weather",
            model=FallbackModel([broken, works]),
            tools=("lookup", "slow_lookup"),
            bounds=Bounds(soft_steps=1),
        ),
        Invocation(
            messages=[Message.user("weather in Paris and Lyon?")],
            caller=Caller(
                user_id=str(alice["id"]),
                display_name="alice",
                guild_id=str(fake.guild.id),
                channel_id=str(fake.guild.channel_id("general")),
                privilege=Privilege.USER,
            ),
            trigger="slash",
        ),
    )
    assert result.ok, result
    inter, first = await slash(fake, "audit", "show", {"run": result.run_id[:8]})
    data = await answer(fake, inter, first)
    shown = text_of(data)
    assert f"Run {result.run_id[:12]} · ok" in shown
    assert "claude-sonnet-4-6" in shown and "overloaded" in shown  # the failed attempt
    assert "gpt-5.4" in shown  # the one that answered
    assert "tool `lookup`" in shown and "Paris" in shown
    assert "sk-secret-123456789012345678" not in shown  # arguments are redacted
    assert "tool `slow_lookup`" in shown
    assert "critic **warn**" in shown  # the soft step limit passed, twice
    assert "Tokens / cost" in shown and "$0.0009" in shown
    assert "Member's 7-day spend: $0.0000 before → $0.0009 after (limit $1.00 now)" in shown

    # A prefix that matches nothing, and the autocomplete on run ids.
    missing, _ = await slash(fake, "audit", "show", {"run": "zzzz"})
    refused = await fake.wait_for_call("POST", rf"/webhooks/{fake.application_id}/{missing.token}")
    assert "No run starts with" in refused.json["content"]
    choices = await autocomplete(fake, "audit", "show", "run", result.run_id[:3])
    assert [c["value"] for c in choices] == [result.run_id]
    assert "weather" in choices[0]["name"]


async def test_audit_export_parses_as_json_lines_and_matches_the_database(
    fake_discord: FakeDiscord, discord_bot: Any, app: tuple[App, ScriptedModel]
) -> None:
    fake = fake_discord
    the_app, _ = app
    ids = [await run_in_guild(the_app, fake, "alice", cost=10 * i + 1) for i in range(3)]
    inter, first = await slash(fake, "audit", "export", {"since": "1d"})
    data = await answer(fake, inter, first)
    files = data["_call"].files
    assert len(files) == 1 and files[0].filename.endswith(".jsonl")
    lines = files[0].content.decode().splitlines()
    exported = [json.loads(line) for line in lines]
    assert sorted(r["run_id"] for r in exported) == sorted(ids)
    for row in exported:
        detail = await the_app.audit_queries.get_run(row["run_id"])
        assert detail is not None
        assert row == json.loads(json.dumps(detail.to_dict(), ensure_ascii=False))
    page = await the_app.admin_log.list(action="audit.export")
    assert page.entries[0].detail["runs"] == 3
    assert page.entries[0].actor_id == str(fake.user("admin")["id"])


# --- /budget ----------------------------------------------------------------------------


async def test_budget_me_set_grant_top_and_the_warning_dm(
    fake_discord: FakeDiscord, discord_bot: Any, app: tuple[App, ScriptedModel]
) -> None:
    fake = fake_discord
    the_app, _ = app
    alice_id = str(fake.user("alice")["id"])
    await run_in_guild(the_app, fake, "alice", cost=300_000)
    _, got = await slash(fake, "budget", "me", user="alice")
    me = text_of(got.json["data"])
    assert got.json["data"]["flags"] & EPHEMERAL
    assert "Spent in the last 7 days: **$0.3000**" in me and "**$1.00**" in me
    assert "more typical runs ($0.3000 each)" in me  # 0.70 left: 2 more

    # Past 50 %: one DM, and only one.
    since = len(fake.calls)
    await run_in_guild(the_app, fake, "alice", cost=250_000)
    dm = await fake.wait_for_call("POST", r"/channels/{c}/messages", since=since)
    assert "used 50 %" in dm.json["content"] and "/budget grant" in dm.json["content"]
    await run_in_guild(the_app, fake, "alice", cost=10_000)
    assert not [c for c in fake.calls[since:] if c.path.endswith("/messages") and c is not dm]

    bob, resolved = member_option(fake, "member", "alice")
    _, got = await slash(
        fake,
        "budget",
        "grant",
        [bob, *opts({"amount": 2.0, "reason": "exam week"})],
        resolved=resolved,
    )
    assert "Granted $2.00" in text_of(got.json["data"])
    _, got = await slash(fake, "budget", "set", [bob, *opts({"limit": "3"})], resolved=resolved)
    shown = text_of(got.json["data"])
    assert "own limit of $3.00" in shown and "**$5.00**" in shown  # 3 + 2 granted
    _, got = await slash(fake, "budget", "show", [bob], resolved=resolved)
    shown = text_of(got.json["data"])
    assert "grant $2.00" in shown and "exam week" in shown
    _, got = await slash(fake, "budget", "set", [bob, *opts({"limit": "lots"})], resolved=resolved)
    assert "is not an amount" in got.json["data"]["content"]
    _, got = await slash(fake, "budget", "top", {"days": 7})
    assert f"<@{alice_id}> · **$0.5600** in 3 run(s)" in text_of(got.json["data"])
    actions = [e.action for e in (await the_app.admin_log.list()).entries]
    assert actions == ["budget.set", "budget.grant"]


async def test_budget_refusal_tells_how_to_ask_an_admin(
    fake_discord: FakeDiscord, discord_bot: Any, app: tuple[App, ScriptedModel]
) -> None:
    fake = fake_discord
    the_app, model = app
    await the_app.budget.set_limit(str(fake.user("alice")["id"]), 0)
    since = len(fake.calls)
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> hello", mentions=["bot"])
    content = await said_in_webhook(fake, "past your 7-day budget", since=since)
    assert "past your 7-day budget of $0.00" in content
    assert "ask a server admin" in content and "/budget grant" in content
    assert model.requests == []


async def test_budget_chart_is_a_png_of_the_chart_size_with_alt_text(
    fake_discord: FakeDiscord, discord_bot: Any, app: tuple[App, ScriptedModel]
) -> None:
    fake = fake_discord
    the_app, _ = app
    for i in range(4):
        await run_in_guild(the_app, fake, "alice", cost=1_000 * (i + 1), persona=f"p{i}")
    inter, first = await slash(fake, "budget", "chart", {"days": 14})
    data = await answer(fake, inter, first)
    (png,) = data["_call"].files
    assert png.filename == "spend.png" and png.content.startswith(PNG)
    width, height = struct.unpack(">II", png.content[16:24])
    assert (width, height) == (CHART_SIZE_IN[0] * CHART_DPI, CHART_SIZE_IN[1] * CHART_DPI)
    attachment = data["attachments"][0]
    assert "stacked by persona or skill" in attachment["description"]
    assert "$0.0100 in total" in attachment["description"]
    assert data["embeds"][0]["image"]["url"] == "attachment://spend.png"
    # A member may chart their own spend, not someone else's.
    inter, first = await slash(fake, "budget", "chart", user="alice")
    assert first.json["type"] == DEFERRED
    mine = await answer(fake, inter, first)
    assert mine["_call"].files[0].content.startswith(PNG)


# --- /forgetme ----------------------------------------------------------------------------


async def test_forgetme_confirmed_leaves_no_row_naming_the_member_but_anonymised_audit(
    fake_discord: FakeDiscord, discord_bot: Any, app: tuple[App, ScriptedModel]
) -> None:
    fake = fake_discord
    the_app, _ = app
    alice = fake.user("alice")
    alice_id = str(alice["id"])
    await run_in_guild(the_app, fake, "alice", cost=600_000)  # past 50 %: a warning mark
    await the_app.audit.flush()
    await the_app.admin.grant(
        Caller(user_id=str(fake.user("admin")["id"]), display_name="admin"),
        alice_id,
        1_000_000,
        reason="welcome",
        guild_id=str(fake.guild.id),
    )
    assert {t for t, _ in await _rows_naming(the_app, alice_id)} >= {
        "audit_runs",
        "budget_alerts",
        "admin_actions",
        "budget_ledger",
    }

    # Cancel first: nothing happens.
    inter = await fake.dispatch_slash("forgetme", {}, user="alice")
    ask = await fake.wait_for_interaction_response(inter)
    assert (
        ask.json["data"]["flags"] & EPHEMERAL and "cannot be undone" in ask.json["data"]["content"]
    )
    message = ask.response["resource"]["message"]
    no = await fake.dispatch_component(
        buttons(message)["Cancel"]["custom_id"], int(message["id"]), user="alice"
    )
    await fake.wait_for_interaction_response(no)
    said = await fake.wait_for_call("POST", rf"/webhooks/{fake.application_id}/{inter.token}")
    assert said.json["content"] == "Nothing was deleted."
    assert await _rows_naming(the_app, alice_id) != []

    inter = await fake.dispatch_slash("forgetme", {}, user="alice")
    ask = await fake.wait_for_interaction_response(inter)
    message = ask.response["resource"]["message"]
    # Somebody else cannot press it for her.
    other = await fake.dispatch_component(
        buttons(message)["Delete my data"]["custom_id"], int(message["id"]), user="bob"
    )
    assert "not yours" in (await fake.wait_for_interaction_response(other)).json["data"]["content"]
    yes = await fake.dispatch_component(
        buttons(message)["Delete my data"]["custom_id"], int(message["id"]), user="alice"
    )
    await fake.wait_for_interaction_response(yes)
    done = await fake.wait_for_call("POST", rf"/webhooks/{fake.application_id}/{inter.token}")
    assert done.json["content"].startswith("Done: coterie forgot you")
    assert await _rows_naming_beyond_the_budget(the_app, alice_id, "alice") == []
    assert (await the_app.budget.status(alice_id)).spent_micros == 600_000  # not reset
    page = await the_app.audit_queries.list_runs(RunFilter(user_id=FORGOTTEN))
    assert len(page.runs) == 1 and page.runs[0].cost_micros == 600_000
    granted = (await the_app.admin_log.list(action="budget.grant")).entries
    assert granted[0].target_id == FORGOTTEN and granted[0].detail["reason"] == ""


async def test_dms_turned_off_by_the_only_guild_are_not_answered(
    fake_discord: FakeDiscord, discord_bot: Any, app: tuple[App, ScriptedModel]
) -> None:
    fake = fake_discord
    the_app, model = app
    decided: asyncio.Queue[bool] = asyncio.Queue()
    should_answer = the_app.chat.should_answer

    async def recorded(msg: Any, surface: Any = None) -> bool:
        answer = await should_answer(msg, surface)
        await decided.put(answer)
        return answer

    the_app.chat.should_answer = recorded  # type: ignore[method-assign]
    dm = int(fake.open_dm("alice")["id"])
    _, got = await slash(fake, "config", "set", {"dms": False})
    assert "DMs: off" in text_of(got.json["data"])
    await fake.dispatch_message("hello in private", channel_id=dm)
    assert await decided.get() is False  # alice shares no other guild with coterie
    _, got = await slash(fake, "config", "set", {"dms": True})
    model.push("Hi in private.")
    since = len(fake.calls)
    await fake.dispatch_message("hello again", channel_id=dm)
    assert await decided.get() is True

    def says(c: Call) -> bool:
        return "Hi in private." in (c.json or {}).get("content", "")

    await fake.wait_for_any(
        [("POST", f"/channels/{dm}/messages"), ("PATCH", f"/channels/{dm}/messages/{{m}}")],
        says,
        since=since,
    )
    assert len(model.requests) == 1
