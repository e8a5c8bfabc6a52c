"""Fixtures of the fake Discord for this directory.

Why here too: until ``tests/conftest.py`` registers ``tests.fakediscord.plugin``
as a plugin, importing the fixtures makes them visible to these tests. Once it
does, this file is redundant but harmless (same fixture objects).
"""

from tests.fakediscord.plugin import bot_factory, discord_bot, fake_discord

__all__ = ["bot_factory", "discord_bot", "fake_discord"]
