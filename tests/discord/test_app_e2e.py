"""The whole product through its real composition root: ``build_app`` (migrated
SQLite, SQL audit and budget, persona store with the built-ins, lanes, critic,
compaction, guard, chat service; ``tests.apps.scripted_app``), ``CoterieBot`` with its
real cogs, the real discord.py client against the fake Discord. Only the model is
scripted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest

from adapters.storage.audit_queries import AuditQueries, RunFilter
from bot.app import App
from executor.events import ModelRequestEvent
from executor.messages import Usage
from executor.testing import Reply, RunEnds, ScriptedModel
from tests.apps import scripted_app
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import coterie_bot, run_bot


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[App, ScriptedModel]]:
    async with scripted_app(tmp_path) as built:
        yield built


async def test_mention_through_the_real_app_is_answered_audited_and_billed(
    fake_discord: FakeDiscord, app: tuple[App, ScriptedModel]
) -> None:
    the_app, model = app
    fake = fake_discord
    bot = coterie_bot(fake, app=the_app, extensions=("commands.persona", "commands.chat"))
    ends = RunEnds()
    the_app.executor.observers.append(ends)
    async with run_bot(fake, bot):
        model.push(
            Reply(
                text="Hi Alice, I am the researcher.",
                chunks=["Hi Alice,", " I am the researcher."],
                usage=Usage(input_tokens=900, output_tokens=12, cost_micros=4_321, requests=1),
            )
        )
        since = len(fake.calls)
        await fake.dispatch_message(
            f"<@{fake.bot_user['id']}> researcher: who are you?", mentions=["bot"]
        )
        post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
        assert post.json["username"] == "researcher"  # the built-in persona, by prefix
        final = "Hi Alice, I am the researcher."
        if post.json["content"] != final:
            await fake.wait_for_call(
                "PATCH",
                r"/webhooks/{id}/{token}/messages/{m}",
                predicate=lambda c: c.json.get("content") == final,
                since=since,
            )
        # the researcher's system prompt and its web_fetch grant reached the model
        req = model.requests[-1]
        assert req.messages[0].role == "system"
        assert "web_fetch" in [t.name for t in req.tools]
        assert req.messages[-1].text == "who are you?"
        assert fake.unknown_calls == []
        await ends.next()

        # (inside the block: leaving it closes the bot, and the bot closes the app)
        # The audit trail has the run, with its trigger, member and cost.
        await the_app.audit.flush()
        page = await AuditQueries(the_app.db.sessions).list_runs(RunFilter(trigger="chat"))
        assert len(page.runs) == 1
        run: Any = page.runs[0]
        assert run.status == "ok"
        assert run.persona == "researcher"
        assert run.user_id == str(fake.user("alice")["id"])
        assert run.cost_micros == 4_321
        # ... and the member's rolling budget was charged exactly that, nothing left reserved.
        status = await the_app.budget.status(run.user_id)
        assert status.spent_micros == 4_321
        assert status.reserved_micros == 0


async def test_post_as_a_persona_in_a_channel_with_no_message_to_answer(
    fake_discord: FakeDiscord, app: tuple[App, ScriptedModel]
) -> None:
    """The scheduler's path: the chat flow posts as persona P in channel C."""
    from adapters.discord.surface import DiscordSurface
    from adapters.discord.webhooks import Webhooks
    from executor.agent import Caller

    the_app, model = app
    fake = fake_discord
    bot = coterie_bot(fake, app=the_app, extensions=("commands.chat",))
    async with run_bot(fake, bot):
        channel = bot.get_channel(fake.guild.channel_id("general"))
        assert isinstance(channel, discord.TextChannel)
        alice = fake.user("alice")
        model.push(
            Reply(
                text="- one\n- two\n- three",
                usage=Usage(input_tokens=50, output_tokens=9, cost_micros=777, requests=1),
            )
        )
        since = len(fake.calls)
        outcome = await the_app.chat.post_as(
            persona=await the_app.chat.persona_for(str(fake.guild.id), "researcher"),
            caller=Caller(
                user_id=str(alice["id"]),
                display_name="alice",
                guild_id=str(fake.guild.id),
                channel_id=str(channel.id),
            ),
            prompt="Summarise #reading as three bullets",
            surface=DiscordSurface(
                channel,
                requester_id=int(alice["id"]),
                bot_user_id=bot.user.id if bot.user else None,
                webhooks=Webhooks(),
                approvals=the_app.approvals,
                limits=the_app.chat.limits,
            ),
            metadata={"skill": "digest"},
        )
        assert outcome.result.ok and outcome.persona.name == "researcher"
        post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
        assert post.json["username"] == "researcher"
        assert model.requests[-1].messages[-1].text == "Summarise #reading as three bullets"
        await the_app.audit.flush()
        page = await the_app.audit_queries.list_runs(RunFilter(trigger="schedule"))
        assert [r.persona for r in page.runs] == ["researcher"]
        assert (await the_app.budget.status(str(alice["id"]))).spent_micros == 777


async def test_a_persona_made_or_removed_with_the_command_answers_the_next_mention(
    fake_discord: FakeDiscord, app: tuple[App, ScriptedModel]
) -> None:
    """Persona lookups are cached (issue 19); a change through /persona is seen at once."""
    the_app, model = app
    fake = fake_discord
    bot = coterie_bot(fake, app=the_app, extensions=("commands.persona", "commands.chat"))
    ends = RunEnds()
    the_app.executor.observers.append(ends)

    async def mention(text: str) -> Any:
        model.push(Reply(text="ok"))
        since = len(fake.calls)
        await fake.dispatch_message(f"<@{fake.bot_user['id']}> {text}", mentions=["bot"])
        post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
        await ends.next()
        if post.json["content"] != "ok":  # the answer's last edit is out before we go on
            await fake.wait_for_call(
                "PATCH",
                r"/webhooks/{id}/{token}/messages/{m}",
                predicate=lambda c: c.json.get("content") == "ok",
                since=since,
            )
        return post.json["username"], model.requests[-1].messages[0].text

    async with run_bot(fake, bot):
        assert (await mention("poet: a line on rain"))[0] == "assistant"  # no poet yet
        inter = await fake.dispatch_slash("persona", {}, subcommand="create")
        opened = await fake.wait_for_interaction_response(inter)
        form = await fake.dispatch_modal_submit(
            opened.json["data"]["custom_id"],
            {
                "name": "poet",
                "description": "Writes short poems.",
                "system_prompt": "You write short, vivid poems.",
                "tier": "standard",
                "tools": "",
            },
        )
        done = await fake.wait_for_interaction_response(form)
        assert "Created the persona **poet**" in done.json["data"]["content"]
        name, system = await mention("poet: a line on rain")
        assert name == "poet" and "You write short, vivid poems." in system

        inter = await fake.dispatch_slash("persona", {"persona": "poet"}, subcommand="delete")
        done = await fake.wait_for_interaction_response(inter)
        assert "Deleted the persona **poet**" in done.json["data"]["content"]
        assert (await mention("poet: a line on rain"))[0] == "assistant"


async def test_the_first_answer_in_a_channel_does_not_wait_for_its_webhook(
    fake_discord: FakeDiscord, app: tuple[App, ScriptedModel]
) -> None:
    """Issue 19: the first mention in a channel since the start looks up (and may make)
    the channel's webhook; the model is asked meanwhile, and the answer goes out
    through the webhook once it is known."""
    the_app, model = app
    fake = fake_discord
    bot = coterie_bot(fake, app=the_app, extensions=("commands.persona", "commands.chat"))
    asked = asyncio.Event()

    class Asked:
        async def on_event(self, event: object) -> None:
            if isinstance(event, ModelRequestEvent):
                asked.set()

    ends = RunEnds()
    the_app.executor.observers += [Asked(), ends]
    async with run_bot(fake, bot):
        gate = fake.hold("GET", r"/channels/{id}/webhooks")
        model.push(Reply(text="Hello from the researcher."))
        since = len(fake.calls)
        await fake.dispatch_message(f"<@{fake.bot_user['id']}> researcher: hi", mentions=["bot"])
        await fake.wait_for_held("GET", r"/channels/{id}/webhooks")
        await asyncio.wait_for(asked.wait(), 10)
        assert fake.held  # the model was asked while the webhook was still being looked up
        gate.set()
        post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
        assert post.json["username"] == "researcher"
        assert (await ends.next()).result.ok
        assert not fake.find_calls("POST", r"/channels/{id}/messages", since=since)


async def test_an_answer_whose_webhook_lookup_hangs_goes_out_as_the_bot(
    fake_discord: FakeDiscord, app: tuple[App, ScriptedModel]
) -> None:
    """Discord does not answer the webhook lookup: past ``lookup_timeout_s`` the answer
    is posted as the bot's own message, headed by the persona's name, not held back."""
    the_app, model = app
    fake = fake_discord
    bot = coterie_bot(fake, app=the_app, extensions=("commands.persona", "commands.chat"))
    ends = RunEnds()
    the_app.executor.observers.append(ends)
    async with run_bot(fake, bot):
        bot.webhooks.lookup_timeout_s = 0.2
        gate = fake.hold("GET", r"/channels/{id}/webhooks")
        try:
            model.push(Reply(text="Hello from the researcher."))
            since = len(fake.calls)
            await fake.dispatch_message(
                f"<@{fake.bot_user['id']}> researcher: hi", mentions=["bot"]
            )
            post = await fake.wait_for_call(
                "POST",
                r"/channels/{id}/messages",
                predicate=lambda c: (
                    "Hello from the researcher." in (c.json or {}).get("content", "")
                ),
                since=since,
            )
            assert post.json["content"].startswith("**researcher**")
            assert (await ends.next()).result.ok
            assert fake.held  # the lookup never answered; the answer did not wait for it
            assert not fake.find_calls("POST", r"/webhooks/{id}/{token}", since=since)
        finally:
            gate.set()
