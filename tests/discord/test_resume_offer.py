"""The offer to resume, on Discord, in process (the real app and client against the
fake Discord; the interrupted runs seeded as a crash leaves them): posted where the run
answered (its channel, a DM for a DM) mentioning only its member; past its time a
press is refused and the buttons come off, and the sweep closes the offers and
says so on each. (The whole path through a killed ``coterie run``:
``tests/chaos/test_sigkill_resume.py``.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.storage.tables import AuditRun
from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Caller
from executor.messages import Message, Usage
from executor.ports import Checkpoint
from executor.testing import FakeClock, ScriptedModel, ScriptedTiers
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import coterie_bot, run_bot

EPHEMERAL = 64


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[App, FakeClock]]:
    clock = FakeClock()
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        resume_offer_hours=1,
    )
    built = await build_app(settings, resolver=ScriptedTiers(ScriptedModel()), clock=clock)
    try:
        yield built, clock
    finally:
        await built.close()


async def _interrupted(app: App, run_id: str, caller: Caller, prompt: str) -> None:
    await app.checkpoints.save(
        Checkpoint(
            run_id=run_id,
            step=0,
            messages=(Message.user(prompt),),
            usage=Usage(),
            caller=caller,
            trigger="chat",
            agent="assistant",
            tier="standard",
            persona="assistant",
        )
    )
    async with app.db.sessions() as s, s.begin():
        s.add(AuditRun(run_id=run_id, trigger="chat", user_id=caller.user_id, status="interrupted"))


def _offers(fake: FakeDiscord) -> list[Any]:
    return fake.find_calls(
        "POST", r"/channels/{c}/messages", lambda c: bool((c.json or {}).get("components"))
    )


async def test_offers_go_where_the_run_answered_and_expire(
    fake_discord: FakeDiscord, app: tuple[App, FakeClock]
) -> None:
    fake, (the_app, clock) = fake_discord, app
    general = fake.guild.channel_id("general")
    alice, bob = str(fake.user("alice")["id"]), str(fake.user("bob")["id"])
    here = Caller(user_id=alice, guild_id=str(fake.guild.id), channel_id=str(general))
    await _interrupted(the_app, "in-guild", here, "what happened in 1848?")
    await _interrupted(the_app, "pressed-late", here, "and in 1849?")
    await _interrupted(the_app, "in-dm", Caller(user_id=bob, channel_id="1"), "hi from a DM")

    async with run_bot(fake, coterie_bot(fake, app=the_app, extensions=("commands.chat",))):
        # What the client does with the ids recovery found, once it is ready.
        assert await the_app.resume.offer_interrupted(["in-guild", "pressed-late", "in-dm"]) == 3
        posted = {c.json["content"].split("\n> ")[1].split("\n")[0]: c for c in _offers(fake)}
        assert set(posted) == {"what happened in 1848?", "and in 1849?", "hi from a DM"}
        guild_offer, dm_offer = posted["what happened in 1848?"], posted["hi from a DM"]
        assert guild_offer.path == f"/channels/{general}/messages"
        assert guild_offer.json["content"].startswith(f"<@{alice}> a restart interrupted")
        assert [str(u) for u in guild_offer.json["allowed_mentions"]["users"]] == [alice]
        assert dm_offer.path != f"/channels/{general}/messages"  # bob's DM
        assert fake.find_calls("POST", "/users/@me/channels")

        await clock.advance(3600)
        # Pressed after its time: refused, and its buttons come off.
        late = posted["and in 1849?"]
        resume_id = late.json["components"][0]["components"][0]["custom_id"]
        since = len(fake.calls)
        press = await fake.dispatch_component(resume_id, int(late.response["id"]), user="alice")
        closed = await fake.wait_for_interaction_response(press)
        assert closed.json["type"] == 7 and closed.json["data"]["components"] == []
        told = await fake.wait_for_call("POST", r"/webhooks/{a}/{t}", since=since)
        assert told.json["flags"] & EPHEMERAL and "expired" in told.json["content"]

        # The sweep closes them all in the database and says so on each message.
        since = len(fake.calls)
        assert await the_app.resume.sweep() == 3
        edits = fake.find_calls("PATCH", r"/channels/{c}/messages/{m}", since=since)
        assert len(edits) == 3
        assert all(e.json["content"].endswith("-# Expired.") for e in edits)
        assert all(e.json["components"] == [] for e in edits)
    assert fake.unknown_calls == []
