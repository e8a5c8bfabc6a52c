"""A member probes the admin commands' autocompletes through the fake Discord (issue
20: ``/audit show run:`` gave a plain member 25 of other members' run ids, names,
skills and statuses). The real app (``build_app`` on SQLite), every cog, the real
discord.py client; only the model is scripted.

Alice types into every autocomplete of every privileged command the command tree has,
with what a prober would: nothing, every first character of an id, a whole run id she
saw elsewhere, SQL wildcards, a long string, a number where a string goes; from the
server and from a DM; with the other options filled in. Every answer is an empty list,
no read of the audit or the personas happens on her behalf, the bot logs no error,
and the admin's choices are there throughout.
"""

from __future__ import annotations

import logging
import string
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import App, build_app
from bot.client import DEFAULT_EXTENSIONS
from bot.settings import Settings
from executor.agent import Caller, Invocation, RunnableAgent
from executor.messages import Message
from executor.testing import ScriptedModel, ScriptedTiers
from tests.discord.test_autocomplete_privilege import Completion, privileged_completions
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot

pytestmark = pytest.mark.chaos

AUTOCOMPLETE_RESULT = 8


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        budget_default_usd=1.0,
    )
    built = await build_app(settings, resolver=ScriptedTiers(ScriptedModel()))
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
def bot_factory(app: App) -> BotFactory:
    def make(fake: FakeDiscord) -> Any:
        return coterie_bot(fake, app=app, extensions=DEFAULT_EXTENSIONS)

    return make


@pytest.fixture
def reads(app: App, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read an autocomplete makes of the audit or the personas, by name."""
    seen: list[str] = []

    def spy(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            seen.append(name)
            return await real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    spy(app.audit_service, "recent_runs")
    spy(app.audit_service, "recent_skills")
    spy(app.personas, "search")
    return seen


@pytest.fixture(autouse=True)
def _no_logged_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def bobs_runs(app: App, fake: FakeDiscord) -> list[str]:
    bob = fake.user("bob")
    ids = []
    for skill in ("payroll-review", None):
        result = await app.executor.run(
            RunnableAgent(
                name="researcher",
                model=ScriptedModel(default="done"),
                persona="researcher",
                skill=skill,
            ),
            Invocation(
                messages=[Message.user("bob's private question")],
                caller=Caller(
                    user_id=str(bob["id"]),
                    display_name="bob",
                    guild_id=str(fake.guild.id),
                    channel_id=str(fake.guild.channel_id("general")),
                ),
                trigger="chat",
            ),
        )
        assert result.ok
        ids.append(result.run_id)
    await app.audit.flush()
    return ids


async def typed(
    fake: FakeDiscord,
    target: Completion,
    value: str | int,
    *,
    user: str,
    channel_id: int | None = None,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    name, *rest = target.path
    group, sub = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0] if rest else None)
    inter = await fake.dispatch_autocomplete(
        name,
        target.option,
        value,
        user=user,
        subcommand=sub,
        group=group,
        channel_id=channel_id,
        options=options,
    )
    got = await fake.wait_for_interaction_response(inter)
    assert got.json["type"] == AUTOCOMPLETE_RESULT, (str(target), value, got.json)
    choices: list[dict[str, Any]] = got.json["data"]["choices"]
    return choices


async def test_a_member_probing_admin_autocompletes_learns_nothing(
    fake_discord: FakeDiscord, discord_bot: Any, app: App, reads: list[str]
) -> None:
    fake = fake_discord
    ids = await bobs_runs(app, fake)
    targets = privileged_completions(discord_bot.tree)
    run = Completion(("audit", "show"), "run", targets[0].needs)
    assert run in targets
    probes: list[str | int] = [
        "",
        *string.hexdigits.lower()[:16],
        ids[0],
        ids[1][:6],
        "%",
        "_",
        "' OR 1=1 --",
        "payroll",
        "x" * 6000,
        "é🙂\u202e",
        7,
    ]
    dm = int(fake.open_dm("alice")["id"])
    asked = 0
    for target in targets:
        for value in probes:
            for channel_id in (None, dm):
                assert await typed(fake, target, value, user="alice", channel_id=channel_id) == []
                asked += 1
        # With the command's other options filled in as a prober would.
        assert (
            await typed(
                fake,
                target,
                "",
                user="alice",
                options={"status": "ok", "since": "30d", "member": str(fake.user("bob")["id"])},
            )
            == []
        )
    assert reads == [], f"{len(reads)} read(s) made for a member: {sorted(set(reads))}"
    print(f"\n{asked} probes of {len(targets)} privileged autocompletes: no choice, no read")

    # The admin's are there all along, and read what they should.
    seen = await typed(fake, run, ids[0][:6], user="admin")
    assert [c["value"] for c in seen] == [ids[0]]
    assert "bob" in seen[0]["name"] and "payroll-review" in seen[0]["name"]
    assert reads == ["recent_runs"]
    assert fake.unknown_calls == []
