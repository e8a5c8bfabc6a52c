"""What makes a conversation continue survives a restart: a persona's earlier answers
(posted through its channel's webhook by the previous process) are still recognised
as the persona's, so a reply to one is answered and a thread's history reads them as
the assistant's turns. Each "life" is a new app and a new client on the same
database and the same Discord, as after a real restart (no webhook id in memory)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.app import App, build_app
from bot.client import CoterieBot
from bot.settings import Settings
from executor.events import RunFinished
from executor.testing import ScriptedModel, ScriptedTiers
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import coterie_bot, run_bot
from tests.lifecycle.conftest import webhook_shows

EXTENSIONS = ("commands.persona", "commands.chat")


class _Finished:
    def __init__(self) -> None:
        self.runs: asyncio.Queue[RunFinished] = asyncio.Queue()

    async def on_event(self, event: object) -> None:
        if isinstance(event, RunFinished):
            self.runs.put_nowait(event)


@asynccontextmanager
async def life(
    fake: FakeDiscord, settings: Settings, model: ScriptedModel
) -> AsyncIterator[tuple[CoterieBot, App, _Finished]]:
    """One process's life: build the app, connect, and close both at the end."""
    app = await build_app(settings, resolver=ScriptedTiers(model, micros_per_token=0))
    finished = _Finished()
    app.executor.observers.append(finished)
    try:
        bot = coterie_bot(fake, app=app, extensions=EXTENSIONS)
        async with run_bot(fake, bot):
            yield bot, app, finished
    finally:
        await app.close()  # as the process's drain does: the database too


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'c.db'}")


def _turns(model: ScriptedModel) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in model.requests[-1].messages if m.role != "system"]


async def test_a_reply_to_a_persona_is_answered_after_a_restart(
    fake_discord: FakeDiscord, settings: Settings
) -> None:
    fake = fake_discord
    model = ScriptedModel(["I read papers for you.", "Mostly arXiv."])
    async with life(fake, settings, model) as (_, _, finished):
        await fake.dispatch_message(
            f"<@{fake.bot_user['id']}> researcher: what do you do?", mentions=["bot"]
        )
        await webhook_shows(fake, "I read papers for you.")
    [answer] = [m for m in fake.history(fake.guild.channel_id("general")) if m.get("webhook_id")]
    assert answer["content"] == "I read papers for you."

    async with life(fake, settings, model) as (bot, _, finished):
        assert bot.webhooks.ids == set()  # nothing remembered across the restart
        since = len(fake.calls)
        # A reply, with no mention: answered only if the answer is known to be ours.
        await fake.dispatch_message(
            "which sources?", mentions=[], message_reference=int(answer["id"])
        )
        done = await asyncio.wait_for(finished.runs.get(), 10)
        assert done.result.output == "Mostly arXiv."
        await webhook_shows(fake, "Mostly arXiv.")
        post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
        assert post.json["username"] == "researcher"  # the persona of the message replied to
    # The persona's answer is the assistant's turn (a reply chain starts at it: a
    # webhook message replies to nothing).
    assert _turns(model)[-2:] == [
        ("assistant", "I read papers for you."),
        ("user", "which sources?"),
    ]
    # One webhook listing per channel, no new webhook made.
    assert len(fake.webhooks) == 1
    assert fake.unknown_calls == []


async def test_a_thread_continues_as_the_persona_after_a_restart(
    fake_discord: FakeDiscord, settings: Settings
) -> None:
    fake = fake_discord
    model = ScriptedModel(["Owls hunt at night.", "Mice, mostly."])
    async with life(fake, settings, model) as (_, _, finished):
        since = len(fake.calls)
        await fake.dispatch_slash("chat", {"prompt": "Tell me about owls", "persona": "researcher"})
        made = await fake.wait_for_call("POST", r"/channels/{c}/messages/{m}/threads", since=since)
        thread_id = int(made.response["id"])
        await webhook_shows(fake, "Owls hunt at night.")

    async with life(fake, settings, model) as (bot, _, finished):
        assert bot.webhooks.ids == set()
        await fake.dispatch_message("What do they eat?", channel_id=thread_id, author="bob")
        done = await asyncio.wait_for(finished.runs.get(), 10)
        assert done.result.output == "Mice, mostly."
        await webhook_shows(fake, "Mice, mostly.")
    turns: Any = _turns(model)
    # The persona's first answer is the assistant's turn, not the member's.
    assert ("assistant", "Owls hunt at night.") in turns
    assert not any(role == "user" and "Owls hunt" in text for role, text in turns)
    assert turns[-1][1] == "What do they eat?"
    assert fake.unknown_calls == []
