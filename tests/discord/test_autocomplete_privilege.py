"""Every autocomplete of every privileged command answers a member who may not run
the command with nothing (issue 20: ``/audit show run:`` gave a plain member 25 of
other members' run ids, names, skills and statuses while the command refused him).

The commands and options are discovered from the bot's command tree (every cog the
bot loads), so a new privileged command, or a new autocomplete on one, is covered
without editing this file. Through the real composition root, the real cogs, the
real discord.py client and the fake Discord.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from discord import app_commands

from adapters.discord.identity import required_privilege
from bot.app import App, build_app
from bot.client import DEFAULT_EXTENSIONS
from bot.settings import Settings
from executor.agent import Caller, Invocation, Privilege, RunnableAgent
from executor.messages import Message
from executor.testing import ScriptedModel, ScriptedTiers
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot

AUTOCOMPLETE_RESULT = 8


@dataclass(frozen=True)
class Completion:
    """One option with an autocomplete on a command that needs more than a member."""

    path: tuple[str, ...]  # ("audit", "show"), or (group, subgroup, command)
    option: str
    needs: Privilege

    def __str__(self) -> str:
        return f"/{' '.join(self.path)} {self.option}: (needs {self.needs.name})"


def privileged_completions(tree: app_commands.CommandTree[Any]) -> list[Completion]:
    found = []
    for command in tree.walk_commands():
        if not isinstance(command, app_commands.Command):
            continue
        needs = required_privilege(command)
        if needs <= Privilege.USER:
            continue
        path = tuple(command.qualified_name.split())
        found += [
            Completion(path, p.display_name, needs) for p in command.parameters if p.autocomplete
        ]
    return found


async def choices(fake: FakeDiscord, target: Completion, user: str) -> list[dict[str, Any]]:
    name, *rest = target.path
    group, sub = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0] if rest else None)
    inter = await fake.dispatch_autocomplete(
        name, target.option, "", user=user, subcommand=sub, group=group
    )
    got = await fake.wait_for_interaction_response(inter)
    assert got.json["type"] == AUTOCOMPLETE_RESULT, (str(target), user, got.json)
    found: list[dict[str, Any]] = got.json["data"]["choices"]
    return found


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


async def seed_runs(app: App, fake: FakeDiscord) -> None:
    """Bob's runs in the guild: what the leak showed (a skill, a persona, his name); and
    the guild's lore."""
    bob = fake.user("bob")
    for skill in ("digest", None):
        result = await app.executor.run(
            RunnableAgent(
                name="researcher",
                model=ScriptedModel(default="done"),
                persona="researcher",
                skill=skill,
            ),
            Invocation(
                messages=[Message.user("what did the board decide?")],
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
    await app.audit.flush()
    # A lore entry (what /memory lore remove completes).
    await app.memory.store.add_lore(
        f"guild:{fake.guild.id}", "assistant", "Movie night is on Fridays", by="1"
    )


async def test_no_autocomplete_of_a_privileged_command_answers_a_member(
    fake_discord: FakeDiscord, discord_bot: Any, app: App
) -> None:
    fake = fake_discord
    await seed_runs(app, fake)
    targets = privileged_completions(discord_bot.tree)
    # The discovery finds what it must (the probe's leak among them).
    shown = {(t.path, t.option) for t in targets}
    assert {
        (("audit", "show"), "run"),
        (("audit", "list"), "skill"),
        (("audit", "list"), "persona"),
        (("config", "set"), "timezone"),
        (("memory", "lore", "remove"), "entry"),
    } <= shown, shown
    for target in targets:
        # Why the moderator too: Manage Messages is not Manage Server.
        for who in ("alice", "moderator"):
            assert await choices(fake, target, who) == [], f"{target} answered {who}"
        # Whoever may run the command still gets its choices: nothing hidden by accident.
        assert await choices(fake, target, "admin") != [], f"{target} gave an admin nothing"
    assert fake.unknown_calls == []


async def test_the_run_autocomplete_leaked_before_the_gate(
    fake_discord: FakeDiscord, discord_bot: Any, app: App
) -> None:
    """The probe's own case, read the way the member saw it."""
    fake = fake_discord
    await seed_runs(app, fake)
    run = Completion(("audit", "show"), "run", Privilege.ADMIN)
    assert await choices(fake, run, "alice") == []
    admin_sees = await choices(fake, run, "admin")
    assert len(admin_sees) == 2 and any("digest" in c["name"] for c in admin_sees)
    assert all("bob" in c["name"] for c in admin_sees)
