"""The real discord.py client against the fake Discord: start, sync, errors, close."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from executor.errors import BudgetDetails, BudgetExceeded
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, FakeApp, coterie_bot, run_bot

EPHEMERAL = 64


class Throwaway(commands.Cog):
    """Slash commands that fail in each way the renderer knows."""

    @app_commands.command(name="boom", description="Fails with a bug")
    async def boom(self, interaction: discord.Interaction) -> None:
        raise RuntimeError("secret internals: kaboom")

    @app_commands.command(name="broke", description="Over budget")
    async def broke(self, interaction: discord.Interaction) -> None:
        raise BudgetExceeded(
            BudgetDetails(
                spent_micros=4_900_000,
                reserved_micros=0,
                estimate_micros=200_000,
                limit_micros=5_000_000,
            )
        )

    @app_commands.command(name="late", description="Fails after deferring")
    async def late(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        raise ValueError("after the defer")

    @app_commands.command(name="admins", description="Admins only")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def admins(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("hello admin")


@pytest.fixture
def bot_factory() -> BotFactory:
    async def make(fake: FakeDiscord) -> Any:
        bot = coterie_bot(fake)
        await bot.add_cog(Throwaway())
        return bot

    return make


def _guild_puts(fake: FakeDiscord) -> list[Any]:
    return fake.find_calls("PUT", "/applications/{app}/guilds/{guild}/commands")


async def test_bot_connects_and_is_ready(fake_discord: FakeDiscord, discord_bot: Any) -> None:
    assert discord_bot.is_ready()
    assert discord_bot.user.id == fake_discord.application_id
    guild = discord_bot.get_guild(fake_discord.guild.id)
    assert guild is not None
    assert guild.get_channel(fake_discord.guild.channel_id("general")) is not None
    assert guild.me.guild_permissions.manage_webhooks
    assert fake_discord.identify_count == 1
    assert discord_bot.app.started == 1
    assert discord_bot.owner_user_ids == {int(fake_discord.users["owner"]["id"])}
    assert fake_discord.unknown_calls == []


async def test_dev_guild_sync_happens_once_in_setup_hook(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    puts = _guild_puts(fake_discord)
    assert len(puts) == 1
    assert puts[0].path.endswith(f"/guilds/{fake_discord.guild.id}/commands")
    assert {c["name"] for c in puts[0].json} == {"boom", "broke", "late", "admins"}
    assert fake_discord.find_calls("PUT", "/applications/{app}/commands") == []

    # A second READY (session invalidated, new IDENTIFY) ...
    ready_again = asyncio.ensure_future(discord_bot.wait_for("ready", timeout=5))
    await fake_discord.invalidate_session()
    await ready_again
    assert fake_discord.identify_count == 2

    # ... and a RESUME do not sync again.
    resumed = asyncio.ensure_future(discord_bot.wait_for("resumed", timeout=5))
    await fake_discord.request_reconnect()
    await resumed
    assert fake_discord.resume_count == 1

    assert len(_guild_puts(fake_discord)) == 1
    assert fake_discord.find_calls("PUT", "/applications/{app}/commands") == []
    assert discord_bot.app.started == 1
    assert fake_discord.unknown_calls == []


async def test_no_dev_guild_no_sync(fake_discord: FakeDiscord) -> None:
    from bot.settings import Settings

    settings = Settings(_env_file=None, dev_guild_id=None)
    async with run_bot(fake_discord, coterie_bot(fake_discord, settings=settings)):
        pass
    assert _guild_puts(fake_discord) == []
    assert fake_discord.find_calls("PUT", "/applications/{app}/commands") == []


async def test_unexpected_error_is_an_ephemeral_reference_and_a_logged_traceback(
    fake_discord: FakeDiscord, discord_bot: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="coterie.discord")
    inter = await fake_discord.dispatch_slash("boom")
    call = await fake_discord.wait_for_interaction_response(inter)
    assert call.json["type"] == 4
    text = call.json["data"]["content"]
    assert call.json["data"]["flags"] & EPHEMERAL
    assert text.startswith("Something went wrong on our side")
    assert "kaboom" not in text and "Traceback" not in text
    ref = text.rsplit("ref ", 1)[1].rstrip(").")
    [record] = [r for r in caplog.records if ref in r.getMessage()]
    assert record.exc_info is not None
    raised = record.exc_info[1]
    assert raised is not None
    assert "kaboom" in str(raised.__cause__ or raised)
    assert fake_discord.unknown_calls == []


async def test_coterie_error_is_a_clear_sentence(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    inter = await fake_discord.dispatch_slash("broke")
    call = await fake_discord.wait_for_interaction_response(inter)
    assert call.json["data"]["flags"] & EPHEMERAL
    assert "7-day budget of $5.00" in call.json["data"]["content"]


async def test_error_after_defer_goes_to_an_ephemeral_followup(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    inter = await fake_discord.dispatch_slash("late")
    deferred = await fake_discord.wait_for_interaction_response(inter)
    assert deferred.json["type"] == 5
    followup = await fake_discord.wait_for_call(
        "POST", f"/webhooks/{fake_discord.application_id}/{inter.token}"
    )
    assert followup.json["flags"] & EPHEMERAL
    assert followup.json["content"].startswith("Something went wrong on our side")


async def test_missing_permission_is_named(fake_discord: FakeDiscord, discord_bot: Any) -> None:
    refused = await fake_discord.dispatch_slash("admins", user="alice")
    call = await fake_discord.wait_for_interaction_response(refused)
    assert call.json["data"]["content"] == "You need the Manage Server permission for this."
    assert call.json["data"]["flags"] & EPHEMERAL

    allowed = await fake_discord.dispatch_slash("admins", user="manager")
    call = await fake_discord.wait_for_interaction_response(allowed)
    assert call.json["data"]["content"] == "hello admin"


async def test_close_stops_the_app_once(fake_discord: FakeDiscord) -> None:
    app = FakeApp()
    bot = coterie_bot(fake_discord, app=app)
    async with run_bot(fake_discord, bot):
        assert app.started == 1
    await bot.close()
    assert app.closed == 1
    assert bot.is_closed()


async def test_missing_extension_is_skipped(fake_discord: FakeDiscord) -> None:
    bot = coterie_bot(fake_discord, extensions=("commands.does_not_exist", "nope.nothing"))
    async with run_bot(fake_discord, bot):
        assert bot.extensions == {}
