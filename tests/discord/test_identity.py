"""adapters.discord.identity: real discord.py Member/User objects (built by the client from
the fake's payloads) -> Caller and Privilege."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from adapters.discord.identity import (
    caller_from_interaction,
    caller_from_message,
    require_privilege,
)
from bot.settings import Settings
from executor.agent import Caller, Privilege
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot

EPHEMERAL = 64


class WhoAmI(commands.Cog):
    def __init__(self) -> None:
        self.callers: list[Caller] = []
        self.from_messages: asyncio.Queue[Caller] = asyncio.Queue()

    @app_commands.command(name="whoami", description="Who am I")
    async def whoami(self, interaction: discord.Interaction) -> None:
        self.callers.append(caller_from_interaction(interaction))
        await interaction.response.send_message("noted", ephemeral=True)

    @app_commands.command(name="modonly", description="Moderators only")
    @require_privilege(Privilege.MODERATOR)
    async def modonly(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("welcome, moderator")

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        await self.from_messages.put(caller_from_message(message, owner_ids={42}))


@pytest.fixture
def bot_factory() -> BotFactory:
    async def make(fake: FakeDiscord) -> Any:
        settings = Settings(
            _env_file=None, dev_guild_id=fake.guild.id, owner_ids=[int(fake.users["bob"]["id"])]
        )
        bot = coterie_bot(fake, settings=settings)
        await bot.add_cog(WhoAmI())
        return bot

    return make


async def _whoami(fake: FakeDiscord, bot: Any, user: str, channel_id: int | None = None) -> Caller:
    inter = await fake.dispatch_slash("whoami", user=user, channel_id=channel_id)
    await fake.wait_for_interaction_response(inter)
    cog: WhoAmI = bot.get_cog("WhoAmI")
    return cog.callers[-1]


@pytest.mark.parametrize(
    ("user", "privilege"),
    [
        ("owner", Privilege.OWNER),  # owns the application (and the guild)
        ("bob", Privilege.OWNER),  # settings.owner_ids
        ("admin", Privilege.ADMIN),  # Administrator
        ("manager", Privilege.ADMIN),  # Manage Server
        ("moderator", Privilege.MODERATOR),  # Manage Messages
        ("alice", Privilege.USER),
    ],
)
async def test_privilege_in_a_guild(
    fake_discord: FakeDiscord, discord_bot: Any, user: str, privilege: Privilege
) -> None:
    caller = await _whoami(fake_discord, discord_bot, user)
    assert caller.privilege is privilege
    assert caller.user_id == fake_discord.users[user]["id"]
    assert caller.guild_id == str(fake_discord.guild.id)
    assert caller.channel_id == str(fake_discord.guild.channel_id("general"))


async def test_roles_exclude_everyone(fake_discord: FakeDiscord, discord_bot: Any) -> None:
    caller = await _whoami(fake_discord, discord_bot, "moderator")
    assert caller.roles == (str(fake_discord.guild.role_id("moderator")),)
    assert caller.display_name == "Moderator"


async def test_guild_owner_is_an_admin_not_a_bot_owner(fake_discord: FakeDiscord) -> None:
    from tests.fakediscord.plugin import run_bot

    # alice owns the guild; the application is owned by "owner".
    fake_discord.guild.owner_id = int(fake_discord.users["alice"]["id"])
    bot = coterie_bot(fake_discord)
    await bot.add_cog(WhoAmI())
    async with run_bot(fake_discord, bot):
        caller = await _whoami(fake_discord, bot, "alice")
    assert caller.privilege is Privilege.ADMIN


async def test_in_a_dm_only_owners_are_privileged(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    dm = int(fake_discord.open_dm("admin")["id"])
    admin = await _whoami(fake_discord, discord_bot, "admin", channel_id=dm)
    assert (admin.privilege, admin.guild_id, admin.channel_id) == (Privilege.USER, None, str(dm))
    dm = int(fake_discord.open_dm("owner")["id"])
    owner = await _whoami(fake_discord, discord_bot, "owner", channel_id=dm)
    assert owner.privilege is Privilege.OWNER


async def test_caller_from_message(fake_discord: FakeDiscord, discord_bot: Any) -> None:
    await fake_discord.dispatch_message("hello", author="moderator")
    cog: WhoAmI = discord_bot.get_cog("WhoAmI")
    caller = await asyncio.wait_for(cog.from_messages.get(), 5)
    assert caller.privilege is Privilege.MODERATOR
    assert caller.guild_id == str(fake_discord.guild.id)
    assert caller.channel_id == str(fake_discord.guild.channel_id("general"))


async def test_require_privilege_refuses_with_a_sentence(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    refused = await fake_discord.dispatch_slash("modonly", user="alice")
    call = await fake_discord.wait_for_interaction_response(refused)
    assert call.json["data"]["content"] == (
        "Only a moderator (Manage Messages) can use this command."
    )
    assert call.json["data"]["flags"] & EPHEMERAL

    for user in ("moderator", "admin", "owner"):
        allowed = await fake_discord.dispatch_slash("modonly", user=user)
        call = await fake_discord.wait_for_interaction_response(allowed)
        assert call.json["data"]["content"] == "welcome, moderator"
