"""Loaded by every Python process whose PYTHONPATH holds this directory: points
discord.py at the fake Discord named by COTERIE_TEST_DISCORD_API (the REST base)
and COTERIE_TEST_DISCORD_GATEWAY, so a real ``coterie run`` subprocess talks to the
test's :class:`tests.fakediscord.FakeDiscord`. Nothing happens without them."""

import os

_api = os.environ.get("COTERIE_TEST_DISCORD_API")
_gateway = os.environ.get("COTERIE_TEST_DISCORD_GATEWAY")
if _api and _gateway:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import discord.gateway
        import discord.http
        import yarl

    discord.http.Route.BASE = _api
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(_gateway)
