"""/skill through the real composition root, the real cogs, the real discord.py client and
the fake Discord: every refusal is a private message that names the problem and saves
nothing; who may schedule is checked on the server side; versions, rollback, delete,
lists, export -> import; the cost preview refuses or asks; a schedule that keeps failing
tells its owner once, then is turned off and the admins told (nobody pinged); and the
``run_skill`` tool runs a skill as a child run, depth-bounded."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import text

from adapters.storage.audit_queries import RunFilter
from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Caller, Invocation, Privilege
from executor.messages import Message, Usage
from executor.testing import FakeClock, Reply, ScriptedModel, ScriptedTiers, call
from personas.model import Persona
from personas.runnable import to_runnable
from skills.markdown import parse_markdown
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import coterie_bot, run_bot
from tests.fakediscord.server import Call, FakeInteraction

EPHEMERAL = 64
MESSAGE, DEFERRED, UPDATE = 4, 5, 7
# Why years ahead: APScheduler times its jobs by the wall clock, the app by the fake one;
# a one-shot due at START + 1h must never be due for real while a test runs.
START = datetime(2036, 12, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TABLES = ("skills", "skill_versions", "schedules", "schedule_slots")
PROMPT = "Summarise what was said about {topic} as three bullets"


# --- the world -------------------------------------------------------------------------


@dataclass
class World:
    app: App
    model: ScriptedModel
    clock: FakeClock
    fake: FakeDiscord
    errors: list[BaseException] = field(default_factory=list)

    @property
    def guild(self) -> str:
        return str(self.fake.guild.id)

    def uid(self, name: str) -> str:
        return str(self.fake.user(name)["id"])

    def caller(self, name: str, privilege: Privilege = Privilege.USER) -> Caller:
        return Caller(
            user_id=self.uid(name), display_name=name, privilege=privilege, guild_id=self.guild
        )

    def channel(self, name: str) -> int:
        return self.fake.guild.channel_id(name)


@pytest.fixture(autouse=True)
def _no_logged_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A traceback the bot only logs (a view callback, a scheduler task, a schedule
    event, a "something went wrong") fails the test."""
    yield
    records = [*caplog.get_records("call"), *caplog.records]
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.fixture
async def world(fake_discord: FakeDiscord, tmp_path: Path) -> AsyncIterator[World]:
    from bot.client import render_error

    model = ScriptedModel()
    clock = FakeClock(START)
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        budget_default_usd=5.0,
        scheduler_role="moderator",
    )
    app = await build_app(settings, resolver=ScriptedTiers(model), clock=clock)
    try:
        bot = coterie_bot(fake_discord, app=app, extensions=("commands.chat", "commands.skill"))
        w = World(app=app, model=model, clock=clock, fake=fake_discord)
        render = bot.tree.on_error

        async def on_error(interaction: Any, error: Any) -> None:
            w.errors.append(error)
            await render(interaction, error)

        bot.tree.on_error = on_error  # type: ignore[method-assign]  # records, then renders
        async with run_bot(fake_discord, bot):
            yield w
        # Every error that reached the renderer was a refusal it could name, not a bug.
        for error in w.errors:
            assert render_error(error)[1] is None, f"unexpected error: {error!r}"
        assert fake_discord.unknown_calls == []
    finally:
        await app.close()


# --- helpers ---------------------------------------------------------------------------


@dataclass
class Answer:
    """What the member reads back for a slash command: its reply, or after a defer its
    first followup."""

    text: str
    data: dict[str, Any]
    response: Call

    @property
    def ephemeral(self) -> bool:
        return bool(int(self.data.get("flags") or 0) & EPHEMERAL)


async def answer(fake: FakeDiscord, inter: FakeInteraction) -> Answer:
    response = await fake.wait_for_interaction_response(inter)
    if response.json["type"] == DEFERRED:
        assert response.json["data"]["flags"] & EPHEMERAL
        followup = await fake.wait_for_call("POST", rf"/webhooks/{{app}}/{inter.token}")
        data: dict[str, Any] = followup.json
    else:
        assert response.json["type"] == MESSAGE, response.json
        data = response.json["data"]
    return Answer(text=str(data.get("content") or ""), data=data, response=response)


async def skill(
    w: World, sub: str, user: str = "alice", *, channel_id: int | None = None, **options: Any
) -> Answer:
    inter = await w.fake.dispatch_slash(
        "skill", options, user=user, subcommand=sub, channel_id=channel_id
    )
    return await answer(w.fake, inter)


async def refused(w: World, sub: str, user: str, *words: str, **options: Any) -> Answer:
    """Run the command; it must answer privately, name the problem, and save nothing."""
    before = await tables(w.app)
    got = await skill(w, sub, user, **options)
    assert got.ephemeral, got.data
    for word in words:
        assert word.lower() in got.text.lower(), (word, got.text)
    assert "something went wrong" not in got.text.lower()
    assert await tables(w.app) == before
    return got


async def tables(app: App) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the skill tables, to prove a refusal wrote nothing."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with app.db.sessions() as session:
        for table in TABLES:
            rows = await session.execute(text(f"SELECT * FROM {table} ORDER BY id"))
            out[table] = [tuple(r) for r in rows]
    return out


async def save_digest(w: World, user: str = "alice", **extra: Any) -> None:
    options: dict[str, Any] = {"name": "digest", "prompt": PROMPT, "persona": "researcher"}
    got = await skill(w, "save", user, **{**options, **extra})
    assert got.ephemeral and "Saved the skill **digest**" in got.text, got.text


def embed_text(data: dict[str, Any]) -> str:
    [embed] = data["embeds"]
    parts = [embed.get("title") or "", embed.get("description") or ""]
    parts += [f"{f['name']}: {f['value']}" for f in embed.get("fields", [])]
    return "\n".join(parts)


def buttons(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["label"]: b for row in data.get("components", []) for b in row["components"]}


async def click(w: World, response: Call, label: str, *, user: str) -> Call:
    message = response.response["resource"]["message"]
    button = buttons(response.json["data"])[label]
    inter = await w.fake.dispatch_component(button["custom_id"], int(message["id"]), user=user)
    return await w.fake.wait_for_interaction_response(inter)


def posts_in(w: World, channel_id: int, since: int) -> list[Call]:
    """Messages the bot posted in a channel (directly or as a persona) since a call index."""
    hooks = {
        str(h["id"]) for h in w.fake.webhooks.values() if str(h["channel_id"]) == str(channel_id)
    }
    return [
        c
        for c in w.fake.calls[since:]
        if c.method == "POST"
        and (
            c.path == f"/channels/{channel_id}/messages"
            or any(c.path.startswith(f"/webhooks/{h}/") for h in hooks)
        )
    ]


def dm_posts(w: World, user: str) -> list[Call]:
    """What the bot sent ``user`` in their DMs."""
    dm = int(w.fake.open_dm(user)["id"])
    return w.fake.find_calls("POST", rf"/channels/{dm}/messages")


# --- 1. who may schedule -----------------------------------------------------------------


async def test_scheduling_needs_manage_server_or_the_scheduler_role(world: World) -> None:
    w = world
    await save_digest(w, "alice")
    got = await refused(
        w,
        "schedule",
        "alice",
        "Manage Server",
        "moderator",
        name="digest",
        cron="0 9 * * *",
        args="topic=rust",
    )
    assert "can't use this command" not in got.text
    await refused(w, "schedule", "bob", "Manage Server", name="digest", at="in 1h", args="topic=x")

    # The moderator has no Manage Server, but the role COTERIE_SCHEDULER_ROLE names.
    moderator = w.fake.user("moderator")["id"]
    member = w.fake.guild.members[int(moderator)]
    assert str(w.fake.guild.role_id("moderator")) in member["roles"]
    got = await skill(
        w, "schedule", "moderator", name="digest", cron="0 9 * * *", args="topic=rust"
    )
    assert got.ephemeral and "Scheduled **digest**" in got.text, got.text
    [info] = await w.app.schedules.list(w.guild)
    assert info.created_by == w.uid("moderator") and info.cron == "0 9 * * *"
    assert info.id in w.app.scheduler.jobs()
    # Manage Server is enough without the role.
    got = await skill(w, "schedule", "manager", name="digest", at="in 2h", args="topic=go")
    assert "Scheduled **digest**" in got.text
    assert len(await w.app.schedules.list(w.guild)) == 2


# --- 2. the time, said wrong ----------------------------------------------------------------


async def test_a_bad_time_is_refused_with_what_is_wrong(world: World) -> None:
    w = world
    await save_digest(w, "moderator")
    args = {"name": "digest", "args": "topic=rust"}
    got = await refused(
        w, "schedule", "moderator", "0 9 * *", "not a cron expression", cron="0 9 * *", **args
    )
    assert "e.g. `0 9 * * 1-5`" in got.text and "4 fields" in got.text
    got = await refused(
        w,
        "schedule",
        "moderator",
        "Mars/Olympus",
        "time zone",
        cron="0 9 * * *",
        timezone="Mars/Olympus",
        **args,
    )
    assert "Europe/Paris" in got.text  # and says what would do
    await refused(w, "schedule", "moderator", "in the past", at="2020-01-01T09:00", **args)
    await refused(
        w, "schedule", "moderator", "exactly one of cron", cron="0 9 * * *", at="in 1h", **args
    )
    await refused(w, "schedule", "moderator", "exactly one of cron", **args)
    assert w.app.scheduler.jobs() == {}


async def test_a_time_at_the_edge_of_the_calendar_is_refused_not_a_crash(world: World) -> None:
    # Year 1 in Berlin is before datetime's first instant in UTC (an OverflowError);
    # year 9999 in New York is after its last.
    w = world
    await save_digest(w, "moderator")
    args = {"name": "digest", "args": "topic=rust"}
    got = await refused(
        w,
        "schedule",
        "moderator",
        "`0001-01-01T00:00` is in the past",
        at="0001-01-01T00:00",
        timezone="Europe/Berlin",
        **args,
    )
    assert "give a later time" in got.text
    await refused(
        w,
        "schedule",
        "moderator",
        "more than ten years away",
        at="9999-12-31T23:59",
        timezone="America/New_York",
        **args,
    )
    assert w.app.scheduler.jobs() == {}


# --- 3. a missing template argument ---------------------------------------------------------


async def test_a_missing_argument_is_refused_before_anything_is_posted(world: World) -> None:
    w = world
    await save_digest(w, "moderator")
    general = w.channel("general")
    since = len(w.fake.calls)
    got = await refused(w, "run", "alice", "missing argument", "topic", name="digest")
    assert "topic=" in got.text  # says how to give it
    assert posts_in(w, general, since) == []
    assert w.model.requests == []  # no run was started

    await refused(
        w, "schedule", "moderator", "missing argument", "topic", name="digest", cron="0 9 * * *"
    )
    assert w.app.scheduler.jobs() == {}


async def test_run_posts_the_answer_as_the_persona(world: World) -> None:
    w = world
    await save_digest(w, "moderator")
    w.model.push(Reply(text="- a\n- b\n- c", usage=Usage(cost_micros=700, requests=1)))
    since = len(w.fake.calls)
    got = await skill(w, "run", "alice", name="digest", args="topic=rust")
    assert got.ephemeral and "Running **digest** v1" in got.text
    post = await w.fake.wait_for_call(
        "POST",
        r"/webhooks/{id}/{token}",
        predicate=lambda c: not c.path.startswith(f"/webhooks/{w.fake.application_id}/"),
        since=since,
    )
    assert post.json["username"] == "researcher"
    # The answer is that first post, or streams into it; the last holds all of it.
    await w.fake.wait_for_any(
        [("POST", r"/webhooks/{id}/{token}"), ("PATCH", r"/webhooks/{id}/{token}/messages/{m}")],
        lambda c: "- c" in (c.json or {}).get("content", ""),
        since=since,
    )
    assert "what was said about rust" in w.model.requests[-1].messages[-1].text
    await w.app.runner.wait_idle()  # the answer shows before the run closes
    await w.app.audit.flush()
    [run] = (await w.app.audit_queries.list_runs(RunFilter(skill="digest"))).runs
    assert (run.user_id, run.trigger, run.skill_version, run.status) == (
        w.uid("alice"),
        "skill",
        1,
        "ok",
    )


# --- 4. names, versions, rollback -------------------------------------------------------------


async def test_versions_belong_to_their_owner_and_rollback_is_a_new_version(world: World) -> None:
    w = world
    await save_digest(w, "alice")
    await refused(
        w,
        "save",
        "bob",
        "belongs to someone else",
        "digest",
        name="digest",
        prompt="Mine now",
    )
    got = await skill(w, "save", "alice", name="digest", prompt="Two bullets about {topic}")
    assert got.ephemeral and "Saved version 2 of the skill **digest**" in got.text
    # The second save kept the first's persona (not given again).
    current = await w.app.skills.version(await w.app.skills.get(w.guild, "digest"))
    assert (current.version, current.spec.persona) == (2, "researcher")

    got = await skill(w, "show", "bob", name="digest")
    assert got.ephemeral
    shown = embed_text(got.data)
    assert "/digest · v2" in shown and "Two bullets about {topic}" in shown
    assert re.search(r"Versions: v1 · <@\d+>\nv2 \(current\)", shown), shown

    got = await skill(w, "rollback", "alice", name="digest", version=1)
    assert got.ephemeral and "back to v1's prompt, as v3" in got.text
    restored = await w.app.skills.version(await w.app.skills.get(w.guild, "digest"))
    assert (restored.version, restored.spec.prompt) == (3, PROMPT)
    shown = embed_text((await skill(w, "show", "alice", name="digest")).data)
    assert "v3 (current)" in shown and "rollback to v1" in shown and "/digest · v3" in shown
    # Someone else may not roll it back either.
    await refused(w, "rollback", "bob", "only the owner", name="digest", version=2)


# --- 5. a persona that does not exist ---------------------------------------------------------


async def test_save_with_an_unknown_persona_is_refused(world: World) -> None:
    w = world
    await refused(
        w,
        "save",
        "alice",
        "persona",
        "ghost",
        "/persona list",
        name="digest",
        prompt=PROMPT,
        persona="ghost",
    )
    assert await w.app.skills.find(w.guild, "digest") is None


# --- 6. the cost preview ------------------------------------------------------------------


async def _preview_micros(w: World, owner: str, runs_per_week: float) -> int:
    found = await w.app.skills.get(w.guild, "digest")
    version = await w.app.skills.version(found)
    preview = await w.app.skill_service.preview(found, version, runs_per_week, w.uid(owner))
    assert preview.basis == "estimate" and preview.weekly_micros > 0
    return preview.weekly_micros


async def test_a_schedule_past_the_budget_is_refused(world: World) -> None:
    w = world
    await save_digest(w, "moderator")
    await w.app.budget.set_limit(w.uid("moderator"), 1)
    got = await refused(
        w,
        "schedule",
        "moderator",
        "7-day budget",
        "more than",
        name="digest",
        cron="0 9 * * *",
        args="topic=rust",
    )
    assert "bigger budget" in got.text  # says what to do
    assert w.app.scheduler.jobs() == {}


async def test_a_costly_schedule_asks_first_cancel_saves_nothing_confirm_saves(
    world: World,
) -> None:
    w = world
    await save_digest(w, "moderator")
    weekly = await _preview_micros(w, "moderator", 1.0)  # a one-shot: one run a week
    await w.app.budget.set_limit(w.uid("moderator"), int(weekly / 0.75))  # about 75 %
    before = await tables(w.app)

    inter = await w.fake.dispatch_slash(
        "skill",
        {"name": "digest", "at": "in 1h", "args": "topic=rust"},
        user="moderator",
        subcommand="schedule",
    )
    asked = await w.fake.wait_for_interaction_response(inter)
    assert asked.json["type"] == MESSAGE and asked.json["data"]["flags"] & EPHEMERAL
    assert "Schedule it anyway?" in asked.json["data"]["content"]
    assert re.search(r"\b7[45]% of your 7-day budget", asked.json["data"]["content"])
    assert list(buttons(asked.json["data"])) == ["Schedule", "Cancel"]
    # Not someone else's to answer.
    other = await click(w, asked, "Schedule", user="alice")
    assert other.json["data"]["flags"] & EPHEMERAL and "not yours" in other.json["data"]["content"]
    chosen = await click(w, asked, "Cancel", user="moderator")
    assert chosen.json["type"] == UPDATE
    told = await w.fake.wait_for_call("POST", rf"/webhooks/{{app}}/{inter.token}")
    assert told.json["content"] == "Not scheduled." and told.json["flags"] & EPHEMERAL
    assert await tables(w.app) == before and w.app.scheduler.jobs() == {}

    inter = await w.fake.dispatch_slash(
        "skill",
        {"name": "digest", "at": "in 1h", "args": "topic=rust"},
        user="moderator",
        subcommand="schedule",
    )
    asked = await w.fake.wait_for_interaction_response(inter)
    await click(w, asked, "Schedule", user="moderator")
    done = await w.fake.wait_for_call("POST", rf"/webhooks/{{app}}/{inter.token}")
    assert "Scheduled **digest**" in done.json["content"] and done.json["flags"] & EPHEMERAL
    [info] = await w.app.schedules.list(w.guild)
    assert w.app.scheduler.jobs()[info.id] == START + timedelta(hours=1)


# --- 7. a schedule that keeps failing ---------------------------------------------------------


async def _fail_five_times(w: World, schedule_id: int, owner: str, why: str) -> None:
    """Fire five successive daily slots that all fail for ``why``: the owner is told once
    after two, and after five the schedule is off, the owner and the admins told."""
    admin_channel = w.channel("random")
    for n in range(5):
        slot = START + n * DAY
        if n:
            await w.clock.advance(DAY.total_seconds())
        since = len(w.fake.calls)
        assert await w.app.scheduler.fire_due(schedule_id, slot) == "fired"
        await w.app.scheduler.wait_idle()
        last = await w.app.schedules.last_slot(schedule_id)
        assert last is not None and (last.slot_at, last.status) == (slot, "failed")
        assert why in (last.reason or "") and "Traceback" not in (last.reason or "")
        assert "internal error" not in (last.reason or "")
        dms = dm_posts(w, owner)
        if n == 1:  # the second failure in a row: one DM, naming the reason
            [dm] = dms
            assert "failed 2 times in a row" in dm.json["content"] and why in dm.json["content"]
            assert dm.json["allowed_mentions"]["parse"] == []
            assert w.fake.find_calls("POST", r"/users/@me/channels")
        elif n in (2, 3):
            assert len(dms) == 1  # not again on the third or the fourth
            assert schedule_id in w.app.scheduler.jobs()
        elif n == 4:
            assert len(dms) == 2
            assert "turned off" in dms[-1].json["content"] and why in dms[-1].json["content"]
            assert dms[-1].json["allowed_mentions"]["parse"] == []
            told = await w.fake.wait_for_call(
                "POST", rf"/channels/{admin_channel}/messages", since=since
            )
            assert "turned off" in told.json["content"] and why in told.json["content"]
            assert f"<@{w.uid(owner)}>" in told.json["content"]  # named, not pinged
            assert told.json["allowed_mentions"]["parse"] == []
    assert len(w.fake.find_calls("POST", rf"/channels/{admin_channel}/messages")) == 1
    off = await w.app.schedules.get(schedule_id)
    assert off is not None and off.enabled is False
    assert "5 times" in (off.disabled_reason or "") and why in (off.disabled_reason or "")
    assert schedule_id not in w.app.scheduler.jobs()
    slots = await w.app.schedules.recent_slots(schedule_id, 10)
    assert sorted(s.slot_at for s in slots) == [START + n * DAY for n in range(5)]
    # A disabled schedule fires no more.
    assert await w.app.scheduler.fire_due(schedule_id, START + 5 * DAY) == "gone"


async def test_a_schedule_whose_persona_is_gone_warns_then_is_turned_off(world: World) -> None:
    w = world
    await w.app.guild_settings.update_guild(w.guild, admin_channel_id=str(w.channel("random")))
    manager = w.caller("manager", Privilege.ADMIN)
    await w.app.personas.create(
        w.guild, Persona(name="scribe", system_prompt="You write short notes."), by=manager
    )
    await save_digest(w, "manager", persona="scribe")
    got = await skill(w, "schedule", "manager", name="digest", cron="0 9 * * *", args="topic=rust")
    assert "Scheduled **digest**" in got.text
    [info] = await w.app.schedules.list(w.guild)
    await w.app.personas.delete(w.guild, "scribe", by=manager)

    await _fail_five_times(w, info.id, "manager", "persona")
    assert w.model.requests == []  # never got as far as a model


async def test_a_schedule_whose_channel_is_gone_warns_then_is_turned_off(world: World) -> None:
    w = world
    await w.app.guild_settings.update_guild(w.guild, admin_channel_id=str(w.channel("random")))
    await save_digest(w, "moderator")
    got = await skill(w, "schedule", "moderator", name="digest", cron="0 9 * * *", args="topic=x")
    assert "Scheduled **digest**" in got.text
    [info] = await w.app.schedules.list(w.guild)
    # The channel is deleted in Discord.
    general = w.channel("general")
    gone = w.fake.channels.pop(general)
    del w.fake.guild.channels["general"]
    await w.fake.dispatch("CHANNEL_DELETE", gone)
    # Gateway events are handled in order: once this is answered, the delete was seen.
    listed = await skill(w, "schedules", "moderator", channel_id=w.channel("random"))
    assert f"#{info.id}" in embed_text(listed.data)

    await _fail_five_times(w, info.id, "moderator", "channel")
    assert w.model.requests == []


# --- 8. delete --------------------------------------------------------------------------------


async def test_delete_by_the_owner_takes_versions_and_schedules_others_are_refused(
    world: World,
) -> None:
    w = world
    await save_digest(w, "moderator")
    await skill(w, "save", "moderator", name="digest", prompt="Again about {topic}")
    got = await skill(w, "schedule", "moderator", name="digest", cron="0 9 * * *", args="topic=x")
    assert "Scheduled" in got.text
    [info] = await w.app.schedules.list(w.guild)
    assert info.id in w.app.scheduler.jobs()

    await refused(w, "delete", "bob", "only the owner", "digest", name="digest")
    assert info.id in w.app.scheduler.jobs()

    got = await skill(w, "delete", "moderator", name="digest")
    assert got.ephemeral and "Deleted **digest** and its 1 schedule(s)" in got.text
    assert await tables(w.app) == {t: [] for t in TABLES}
    assert w.app.scheduler.jobs() == {}
    await refused(w, "show", "moderator", "no skill named", name="digest")


# --- lists, unschedule, export -> import --------------------------------------------------------


async def test_list_schedules_and_unschedule(world: World) -> None:
    w = world
    await save_digest(w, "moderator", description="Three bullets on a topic")
    got = await skill(w, "list", "bob")
    assert got.ephemeral and got.data["allowed_mentions"]["parse"] == []
    listed = embed_text(got.data)
    assert f"**digest** v1 · <@{w.uid('moderator')}> — Three bullets on a topic" in listed
    assert "You have no skills yet" in (await skill(w, "list", "bob", scope="mine")).text

    assert (await skill(w, "schedules", "moderator")).text == "No schedules."
    got = await skill(
        w,
        "schedule",
        "moderator",
        name="digest",
        cron="30 8 * * 1-5",
        timezone="Europe/Paris",
        args="topic=rust",
    )
    assert "Scheduled **digest**" in got.text
    [info] = await w.app.schedules.list(w.guild)
    due = w.app.scheduler.jobs()[info.id]
    assert due is not None

    got = await skill(w, "schedules", "moderator")
    assert got.ephemeral and got.data["allowed_mentions"]["parse"] == []
    line = embed_text(got.data)
    assert f"**digest** #{info.id} `30 8 * * 1-5` Europe/Paris in <#{w.channel('general')}>" in line
    assert f"next <t:{int(due.timestamp())}:F>" in line
    # Someone else's schedules are not theirs; the server's list shows them.
    assert (await skill(w, "schedules", "bob")).text == "No schedules."
    assert f"#{info.id}" in embed_text((await skill(w, "schedules", "bob", scope="guild")).data)
    await refused(w, "unschedule", "bob", "no schedule", name="digest")

    got = await skill(w, "unschedule", "moderator", name="digest", schedule=info.id)
    assert got.ephemeral and f"Removed schedule #{info.id} of **digest**" in got.text
    assert await w.app.schedules.list(w.guild) == [] and w.app.scheduler.jobs() == {}
    assert (await skill(w, "schedules", "moderator")).text == "No schedules."


async def test_unschedule_takes_your_own_and_an_admin_names_anyone_elses(world: World) -> None:
    """Issue 20: the rule lives in the skill service. Without a number, an admin's
    /skill unschedule removed every member's schedules of the skill; it removes
    theirs, and another member's only when they name it."""
    w = world
    await save_digest(w, "moderator")
    for who, cron in (("moderator", "0 9 * * *"), ("admin", "0 10 * * *")):
        got = await skill(w, "schedule", who, name="digest", cron=cron, args="topic=x")
        assert "Scheduled" in got.text, got.text
    theirs, mine = sorted(
        await w.app.schedules.list(w.guild), key=lambda s: s.created_by != w.uid("moderator")
    )
    assert mine.created_by == w.uid("admin")

    got = await skill(w, "unschedule", "admin", name="digest")
    assert got.ephemeral and got.text == f"Removed schedule #{mine.id} of **digest**."
    assert [s.id for s in await w.app.schedules.list(w.guild)] == [theirs.id]
    assert set(w.app.scheduler.jobs()) == {theirs.id}

    # Not even by its number may a member remove another's (the skill is not theirs
    # either), nor name a schedule of another skill.
    await refused(w, "unschedule", "bob", "no schedule", name="digest", schedule=theirs.id)
    await refused(w, "unschedule", "bob", "no skill named", name="nope", schedule=theirs.id)

    got = await skill(w, "unschedule", "admin", name="digest", schedule=theirs.id)
    assert got.text == f"Removed schedule #{theirs.id} of **digest**."
    assert await w.app.schedules.list(w.guild) == [] and w.app.scheduler.jobs() == {}


@pytest.fixture
async def cdn() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """Where the test's attachments are downloaded from (Discord's CDN, on loopback)."""
    files: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        body = files.get(request.match_info["name"])
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="text/markdown")

    web_app = web.Application()
    web_app.router.add_get("/attachments/{name}", serve)
    runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/attachments", files
    finally:
        await runner.cleanup()


async def import_file(
    w: World, cdn: tuple[str, dict[str, bytes]], filename: str, content: bytes, user: str
) -> Answer:
    base, files = cdn
    files[filename] = content
    attachment_id = str(w.fake.snowflake())
    resolved = {
        "attachments": {
            attachment_id: {
                "id": attachment_id,
                "filename": filename,
                "size": len(content),
                "url": f"{base}/{filename}",
                "proxy_url": f"{base}/{filename}",
                "content_type": "text/markdown",
            }
        }
    }
    options = [{"name": "file", "type": 11, "value": attachment_id}]
    inter = await w.fake.dispatch_slash(
        "skill", options, user=user, subcommand="import", resolved=resolved
    )
    return await answer(w.fake, inter)


async def test_export_then_import_round_trips(
    world: World, cdn: tuple[str, dict[str, bytes]]
) -> None:
    w = world
    await save_digest(w, "alice", description="Three bullets", tools="current_time")
    original = await w.app.skills.version(await w.app.skills.get(w.guild, "digest"))
    got = await skill(w, "export", "alice", name="digest")
    assert got.ephemeral and "ready for /skill import" in got.text
    [file] = got.response.files
    assert file.filename == "digest.md"
    name, spec = parse_markdown(file.content.decode("utf-8"), source="digest.md")
    assert (name, spec) == ("digest", original.spec)

    # While the skill exists, importing it again is refused and changes nothing.
    before = await tables(w.app)
    got = await import_file(w, cdn, "digest.md", file.content, "alice")
    assert got.ephemeral and "already exists" in got.text
    assert await tables(w.app) == before

    assert "Deleted **digest**" in (await skill(w, "delete", "alice", name="digest")).text
    got = await import_file(w, cdn, "digest.md", file.content, "bob")
    assert got.ephemeral and got.text == "Imported **digest** (v1)."
    imported = await w.app.skills.get(w.guild, "digest")
    version = await w.app.skills.version(imported)
    assert imported.owner_id == w.uid("bob") and version.spec == original.spec
    assert "imported from digest.md" in version.note


# --- 9. the run_skill tool ---------------------------------------------------------------------


async def _dispatcher(w: World) -> Persona:
    return await w.app.personas.create(
        w.guild,
        Persona(
            name="dispatcher",
            system_prompt="You hand work to the server's skills.",
            tools=("run_skill",),
        ),
        by=w.caller("manager", Privilege.ADMIN),
    )


def _usage(cost: int) -> Usage:
    return Usage(input_tokens=10, output_tokens=5, cost_micros=cost, requests=1)


async def test_run_skill_returns_the_skills_answer_as_a_child_run(world: World) -> None:
    w = world
    await save_digest(w, "moderator")
    persona = await _dispatcher(w)
    alice = w.caller("alice")
    w.model.push(
        Reply(tool_calls=[call("run_skill", name="digest", args="topic=x")], usage=_usage(300))
    )
    w.model.push(Reply(text="- x one\n- x two\n- x three", usage=_usage(200)))  # the skill
    w.model.push(Reply(text="The digest says: x one, two, three.", usage=_usage(100)))

    result = await w.app.executor.run(
        to_runnable(persona),
        Invocation(messages=[Message.user("Digest x for me")], caller=alice, trigger="chat"),
    )
    assert result.ok and result.output == "The digest says: x one, two, three."
    # The skill ran with its own prompt, and its answer came back as the tool result.
    assert "what was said about x" in w.model.requests[1].messages[-1].text
    [tool_result] = [p for m in w.model.requests[2].messages for p in m.tool_results]
    assert not tool_result.is_error and tool_result.content == "- x one\n- x two\n- x three"

    await w.app.audit.flush()
    [child] = (await w.app.audit_queries.list_runs(RunFilter(parent_run_id=result.run_id))).runs
    assert (child.skill, child.skill_version, child.persona, child.agent) == (
        "digest",
        1,
        "researcher",
        "skill:digest",
    )
    assert (child.user_id, child.status, child.cost_micros) == (alice.user_id, "ok", 200)
    status = await w.app.budget.status(alice.user_id)
    assert status.spent_micros == 600 and status.reserved_micros == 0


async def test_a_skill_running_itself_is_refused_past_the_dispatch_depth(world: World) -> None:
    w = world
    assert w.app.settings.skill_dispatch_depth == 2
    persona = await _dispatcher(w)
    got = await skill(
        w,
        "save",
        "alice",
        name="deeper",
        prompt="Go one level deeper",
        persona="dispatcher",
        tools="run_skill",
    )
    assert "Saved the skill **deeper**" in got.text
    alice = w.caller("alice")
    # depth 0 (the persona) -> 1 -> 2 each ask for the skill again; depth 3 is refused.
    for _ in range(3):
        w.model.push(Reply(tool_calls=[call("run_skill", name="deeper")], usage=_usage(10)))
    for level in (2, 1, 0):
        w.model.push(Reply(text=f"stopped at {level}", usage=_usage(10)))

    result = await w.app.executor.run(
        to_runnable(persona),
        Invocation(messages=[Message.user("Go deep")], caller=alice, trigger="chat"),
    )
    assert result.ok and result.output == "stopped at 0"
    assert len(w.model.requests) == 6  # the refused run never reached the model
    # The deepest run that did run read the refusal as its tool's error.
    [deepest_result] = [p for m in w.model.requests[3].messages for p in m.tool_results]
    assert deepest_result.is_error and "refused" in deepest_result.content

    await w.app.audit.flush()
    runs = (await w.app.audit_queries.list_runs(RunFilter(skill="deeper"))).runs
    assert sorted(r.status for r in runs) == ["ok", "ok", "refused"]
    [stopped] = [r for r in runs if r.status == "refused"]
    assert "depth 3" in (stopped.error or "") and "limit of 2" in (stopped.error or "")
    assert stopped.user_id == alice.user_id and stopped.parent_run_id is not None
    assert (await w.app.budget.status(alice.user_id)).spent_micros == 60


# --- the renderer ------------------------------------------------------------------------------


def test_the_bot_renders_skill_errors_itself() -> None:
    from bot import client
    from skills.errors import InvalidCron, SkillExists

    for error in (SkillExists("digest"), InvalidCron("0 9 * *", "it has 4 fields")):
        assert client.render_error(error) == (str(error), None)
