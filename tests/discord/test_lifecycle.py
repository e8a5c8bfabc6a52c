"""The real discord.py client against the fake Discord: start, sync, errors, close."""

from __future__ import annotations

from typing import Any

from tests.fakediscord import FakeDiscord


async def test_bot_connects_and_is_ready(fake_discord: FakeDiscord, discord_bot: Any) -> None:
    assert discord_bot.is_ready()
    assert discord_bot.user.id == fake_discord.application_id
    guild = discord_bot.get_guild(fake_discord.guild.id)
    assert guild is not None
    assert guild.get_channel(fake_discord.guild.channel_id("general")) is not None
    assert fake_discord.identify_count == 1
    assert fake_discord.unknown_calls == []
