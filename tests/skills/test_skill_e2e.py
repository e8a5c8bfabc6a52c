"""Skills end to end through the real composition root, the real cogs and the fake
Discord: /skill save -> /skill schedule at:in 1m -> the slot fires (the scheduler's own
job entry, on a fake clock) -> the answer appears as the persona, audited with trigger
``schedule`` and the skill's name and version, charged to the schedule's owner. And a
scheduled skill that loops on one tool call is killed by the critic, the admin channel
told, the verdict audited, and only what was spent charged."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.storage.audit_queries import RunFilter
from bot.app import App, build_app
from bot.client import CoterieBot
from bot.settings import Settings
from executor.agent import Caller, Privilege
from executor.messages import Usage
from executor.testing import FakeClock, Reply, ScriptedModel, ScriptedTiers, call
from skills.model import SkillSpec
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import coterie_bot, run_bot

EPHEMERAL = 64
# Why years ahead: APScheduler times its jobs by the real clock; a one-shot in the real
# past would fire at once.
START = datetime(2036, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[App, ScriptedModel, FakeClock]]:
    model = ScriptedModel()
    clock = FakeClock(START)
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        budget_default_usd=5.0,
    )
    app = await build_app(settings, resolver=ScriptedTiers(model), clock=clock)
    try:
        yield app, model, clock
    finally:
        await app.close()


def _bot(fake: FakeDiscord, app: App) -> CoterieBot:
    return coterie_bot(fake, app=app, extensions=("commands.chat", "commands.skill"))


async def _answer(fake: FakeDiscord, interaction: Any) -> str:
    """The text the member reads back for a slash command (its reply or first followup)."""
    response = await fake.wait_for_interaction_response(interaction)
    if response.json["type"] == 4:
        return str(response.json["data"].get("content", ""))
    followup = await fake.wait_for_call("POST", rf"/webhooks/{{app}}/{interaction.token}")
    return str(followup.json.get("content", ""))


async def test_save_schedule_fire_post_as_persona_audited_and_charged(
    fake_discord: FakeDiscord, world: tuple[App, ScriptedModel, FakeClock]
) -> None:
    app, model, clock = world
    fake = fake_discord
    async with run_bot(fake, _bot(fake, app)):
        saved = await fake.dispatch_slash(
            "skill",
            {
                "name": "digest",
                "prompt": "Summarise what was said about {topic} as three bullets",
                "persona": "researcher",
            },
            user="manager",
            subcommand="save",
        )
        assert "Saved the skill **digest**" in await _answer(fake, saved)

        scheduled = await fake.dispatch_slash(
            "skill",
            {"name": "digest", "at": "in 1m", "args": "topic=rust"},
            user="manager",
            subcommand="schedule",
        )
        reply = await _answer(fake, scheduled)
        assert "Scheduled **digest**" in reply
        due = START + timedelta(minutes=1)
        assert f"<t:{int(due.timestamp())}:F>" in reply and ":R>" in reply
        [info] = await app.schedules.list(str(fake.guild.id))
        assert app.scheduler.jobs()[info.id] == due  # APScheduler holds exactly this job

        model.push(
            Reply(
                text="- one\n- two\n- three",
                usage=Usage(input_tokens=80, output_tokens=12, cost_micros=2_500, requests=1),
            )
        )
        since = len(fake.calls)
        await clock.advance(60)
        assert await app.scheduler.due(info.id, due) == "fired"
        post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
        assert post.json["username"] == "researcher"
        assert "Summarise what was said about rust" in model.requests[-1].messages[-1].text

        await app.audit.flush()
        [run] = (await app.audit_queries.list_runs(RunFilter(trigger="schedule"))).runs
        manager = str(fake.user("manager")["id"])
        assert (run.skill, run.skill_version, run.persona, run.user_id) == (
            "digest",
            1,
            "researcher",
            manager,
        )
        assert run.status == "ok" and run.cost_micros == 2_500
        assert (await app.budget.status(manager)).spent_micros == 2_500
        # A one-shot is done: disabled, no job left, the slot recorded.
        done = await app.schedules.get(info.id)
        assert done is not None and not done.enabled and done.last_status == "ok"
        assert info.id not in app.scheduler.jobs()
        # And the same slot never runs twice.
        assert await app.scheduler.fire_due(info.id, due) in ("gone", "duplicate")


class Statements:
    """Every SQL statement the engine sends while counting (a SQLAlchemy event)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.sync_engine
        self.seen: list[str] = []

    def _on(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        self.seen.append(" ".join(statement.split()))

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)

    def reads(self, table: str) -> int:
        return sum(1 for s in self.seen if s.startswith("SELECT") and f" FROM {table} " in s)


async def test_a_slot_reads_its_skill_and_persona_once_signs_its_post_and_logs_one_line(
    fake_discord: FakeDiscord,
    world: tuple[App, ScriptedModel, FakeClock],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, model, clock = world
    fake = fake_discord
    async with run_bot(fake, _bot(fake, app)):
        saved = await fake.dispatch_slash(
            "skill",
            {"name": "digest", "prompt": "Summarise {topic}", "persona": "researcher"},
            user="manager",
            subcommand="save",
        )
        assert "Saved the skill **digest**" in await _answer(fake, saved)
        scheduled = await fake.dispatch_slash(
            "skill",
            {"name": "digest", "at": "in 1m", "args": "topic=rust"},
            user="manager",
            subcommand="schedule",
        )
        assert "Scheduled **digest**" in await _answer(fake, scheduled)
        [info] = await app.schedules.list(str(fake.guild.id))
        model.push(
            Reply(
                text="- one",
                usage=Usage(input_tokens=8, output_tokens=2, cost_micros=25, requests=1),
            )
        )
        due = START + timedelta(minutes=1)
        await clock.advance(60)
        since = len(fake.calls)
        with Statements(app.db.engine) as sql, caplog.at_level(logging.INFO, "skills"):
            assert await app.scheduler.due(info.id, due) == "fired"
            await app.scheduler.wait_idle()
            await app.audit.flush()

        # Each thing the slot needs is read once and handed on as an object: the skill
        # (with its version, one statement) and the persona. It read the skill three
        # times and the persona twice, 48 statements in all.
        assert sql.reads("skills") == 1, sql.seen
        # At most once: the persona cache may hold it already from an earlier lookup.
        assert sql.reads("personas") <= 1, sql.seen
        # 39 then, plus the audit's record of whether the answer reached the channel and
        # the model request written before it is sent (what a crash mid-request owes),
        # and the run's checkpoint before its first model call (BEGIN, INSERT: a restart
        # resumes the slot from it; its row goes with the store's next write).
        assert len(sql.seen) <= 44, "\n".join(sql.seen)

        # The post says which skill made it, under the answer.
        posts = fake.find_calls("POST", r"/webhooks/{id}/{token}", since=since) + (
            fake.find_calls("PATCH", r"/webhooks/{id}/{token}/messages/{id}", since=since)
        )
        assert posts and posts[0].json["username"] == "researcher"
        final = posts[-1].json["content"]
        assert final.startswith("- one")
        assert final.endswith(f"-# skill **digest** · schedule #{info.id}")

        # One log line for the fire, with what an operator greps for.
        [line] = [r for r in caplog.records if r.getMessage() == "schedule slot"]
        fields = {k: getattr(line, k, None) for k in ("schedule_id", "skill", "outcome")}
        assert fields == {"schedule_id": info.id, "skill": "digest", "outcome": "ok"}
        assert line.slot_at == due.isoformat()  # type: ignore[attr-defined]
        assert line.run_id  # type: ignore[attr-defined]


async def test_a_skipped_one_shot_is_listed_as_skipped(
    fake_discord: FakeDiscord, world: tuple[App, ScriptedModel, FakeClock]
) -> None:
    app, _model, clock = world
    fake = fake_discord
    async with run_bot(fake, _bot(fake, app)):
        saved = await fake.dispatch_slash(
            "skill",
            {"name": "digest", "prompt": "Summarise rust", "persona": "researcher"},
            user="manager",
            subcommand="save",
        )
        assert "Saved" in await _answer(fake, saved)
        scheduled = await fake.dispatch_slash(
            "skill", {"name": "digest", "at": "in 1m"}, user="manager", subcommand="schedule"
        )
        assert "Scheduled **digest**" in await _answer(fake, scheduled)
        [info] = await app.schedules.list(str(fake.guild.id))
        due = START + timedelta(minutes=1)
        await clock.advance(3600)  # the machine was paused past the slot's grace
        assert await app.scheduler.due(info.id, due) == "skipped"

        listed = await fake.dispatch_slash(
            "skill", {"scope": "mine"}, user="manager", subcommand="schedules"
        )
        response = await fake.wait_for_interaction_response(listed)
        [embed] = response.json["data"]["embeds"]
        line = embed["description"]
        assert "**digest**" in line and "last skipped" in line
        assert "skipped" in line.split("off:")[1] and "it has run" not in line


async def test_a_looping_scheduled_skill_is_killed_and_the_admins_are_told(
    fake_discord: FakeDiscord, world: tuple[App, ScriptedModel, FakeClock]
) -> None:
    app, model, _clock = world
    fake = fake_discord
    guild = str(fake.guild.id)
    admin_channel = fake.guild.channel_id("random")
    await app.guild_settings.update_guild(guild, admin_channel_id=str(admin_channel))
    owner = str(fake.user("manager")["id"])
    await app.skills.save(
        guild,
        "looper",
        SkillSpec(prompt="What time is it?", persona="assistant", tools=("current_time",)),
        by=Caller(user_id=owner, privilege=Privilege.ADMIN, guild_id=guild),
    )
    skill = await app.skills.get(guild, "looper")
    info = await app.schedules.create(
        skill_id=skill.id,
        guild_id=guild,
        channel_id=str(fake.guild.channel_id("general")),
        created_by=owner,
        cron="0 9 * * *",
    )
    # The model asks for the same tool with the same arguments, forever.
    for _ in range(40):
        model.push(
            Reply(
                tool_calls=[call("current_time", timezone="UTC")],
                usage=Usage(input_tokens=10, output_tokens=5, cost_micros=100, requests=1),
            )
        )
    async with run_bot(fake, _bot(fake, app)):
        since = len(fake.calls)
        assert await app.scheduler.fire_due(info.id, START) == "fired"
        await app.scheduler.wait_idle()
        told = await fake.wait_for_call(
            "POST",
            rf"/channels/{admin_channel}/messages",
            predicate=lambda c: "critic" in c.json.get("content", ""),
            since=since,
        )
        assert "killed" in told.json["content"] or "stopped" in told.json["content"]
        assert told.json["allowed_mentions"]["parse"] == []
        await app.audit.flush()
        [run] = (await app.audit_queries.list_runs(RunFilter(trigger="schedule"))).runs
        assert run.status == "killed"
        detail = await app.audit_queries.get_run(run.run_id)
        assert detail is not None
        verdicts = [e for e in detail.events if e.kind == "critic_verdict"]
        assert verdicts and verdicts[-1].data["verdict"] == "stop"
        assert "same tool call" in verdicts[-1].data["reason"]
        spent = sum(a.cost_micros for a in detail.attempts)
        # Each answer cost 100, on its attempt; the stop may land before the last started
        # step finished (its answer counted, or, still in flight, its input charged on an
        # attempt of its own), then that step is in run.steps, not in the steps table.
        assert spent == run.cost_micros >= 100 * len(detail.steps)
        assert detail.run.steps in (len(detail.steps), len(detail.steps) + 1)
        status = await app.budget.status(owner)
        assert status.spent_micros == spent and status.reserved_micros == 0
        slot = await app.schedules.last_slot(info.id)
        assert slot is not None and slot.status == "failed"
        assert re.search(r"critic", slot.reason or "", re.IGNORECASE)


async def test_a_slot_for_a_guild_another_process_serves_is_posted_over_rest(
    fake_discord: FakeDiscord, world: tuple[App, ScriptedModel, FakeClock]
) -> None:
    """The scheduler's leader posts for every guild: one whose shard another process
    serves is not in this client's cache, and is read over REST (roles, the bot's
    member, the owner, the channel), the post going out through the channel's webhook."""
    from adapters.services.instances import FixedShards
    from skills.model import SkillSpec as Spec

    app, model, clock = world
    fake = fake_discord
    fake.recommended_shards = 2
    elsewhere = fake.add_guild("elsewhere", shard=1, shard_count=2)
    bot = _bot(fake, app)
    bot.shard_planner = FixedShards(2, [0])  # this process serves shard 0 only
    async with run_bot(fake, bot):
        assert bot.get_guild(elsewhere.id) is None  # never in the gateway's cache
        manager = Caller(
            user_id=str(fake.user("manager")["id"]),
            display_name="manager",
            privilege=Privilege.ADMIN,
            guild_id=str(elsewhere.id),
        )
        skill, _version = await app.skills.save(
            str(elsewhere.id),
            "digest",
            Spec(prompt="Summarise {topic}", persona="researcher"),
            by=manager,
        )
        channel = elsewhere.channel_id("general")
        info = await app.schedules.create(
            skill_id=skill.id,
            guild_id=str(elsewhere.id),
            channel_id=str(channel),
            created_by=manager.user_id,
            cron=None,
            run_at=START + timedelta(minutes=1),
            timezone="UTC",
            arguments={"topic": "rust"},
            missed="skip",
        )
        model.push(Reply(text="- posted from afar"))
        await clock.advance(60)
        since = len(fake.calls)
        assert await app.scheduler.fire_due(info.id, START + timedelta(minutes=1)) == "fired"
        await app.scheduler.wait_idle()
        post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
        assert post.json["username"] == "researcher"
        answers = [m for m in fake.history(channel) if m.get("webhook_id")]
        assert len(answers) == 1 and answers[0]["content"].startswith("- posted from afar")
        [slot] = await app.schedules.recent_slots(info.id)
        assert slot.status == "ok", slot.reason
        # What it read over REST: the guild once (kept), the bot's member in it and the
        # owner, the channel.
        assert len(fake.find_calls("GET", rf"/guilds/{elsewhere.id}", since=since)) == 1
        members = fake.find_calls("GET", rf"/guilds/{elsewhere.id}/members/{{id}}", since=since)
        assert len(members) == 2
        assert len(fake.find_calls("GET", rf"/channels/{channel}", since=since)) == 1
        assert fake.unknown_calls == []
