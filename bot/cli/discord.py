"""``coterie run``, ``coterie invite``, ``coterie sync``: the bot's Discord verbs.

The application id (for the invite URL) comes from ``COTERIE_APPLICATION_ID``
or, failing that, from the token: a bot token's first segment is the base64 of
the bot's user id, which equals the application id for every application
created since 2019.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import logging
import os
import signal
from typing import Any

from bot.cli._common import fail

__all__ = ["application_id_from_token", "invite_url", "register"]

log = logging.getLogger("coterie")

NO_TOKEN = "set DISCORD_TOKEN to the bot token from the Discord developer portal (Bot > Token)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run the Discord bot")
    run.set_defaults(handler=_run)

    invite = sub.add_parser("invite", help="print the URL that adds the bot to a server")
    invite.set_defaults(handler=_invite)

    sync = sub.add_parser("sync", help="publish the slash commands to Discord (global by default)")
    sync.add_argument("--guild", type=int, metavar="ID", help="sync to this server only")
    sync.set_defaults(handler=_sync)


def application_id_from_token(token: str) -> int | None:
    """The bot user id encoded in a bot token's first segment, or None."""
    first = token.strip().split(".", 1)[0]
    try:
        raw = base64.b64decode(first + "=" * (-len(first) % 4), altchars=b"-_")
        return int(raw.decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def _application_id(settings: Any) -> int | None:
    configured = getattr(settings, "application_id", None) or os.environ.get(
        "COTERIE_APPLICATION_ID"
    )
    if configured:
        try:
            return int(configured)
        except ValueError:
            return None
    token = settings.discord_token
    return application_id_from_token(token.get_secret_value()) if token else None


def invite_url(application_id: int) -> str:
    import discord

    from bot.client import coterie_permissions

    return discord.utils.oauth_url(
        application_id,
        permissions=coterie_permissions(),
        scopes=("bot", "applications.commands"),
    )


def _settings() -> Any:
    from bot.settings import Settings

    return Settings()


def _token(settings: Any) -> str | None:
    token = settings.discord_token
    value = token.get_secret_value().strip() if token else ""
    return value or None


def _invite(args: argparse.Namespace) -> int:
    settings = _settings()
    app_id = _application_id(settings)
    if app_id is None:
        return fail(
            "set COTERIE_APPLICATION_ID (General Information > Application ID) "
            "or DISCORD_TOKEN to compute the invite URL"
        )
    print(invite_url(app_id))
    return 0


def _setup_logging() -> None:
    import discord

    discord.utils.setup_logging(level=logging.INFO, root=True)


async def _run(args: argparse.Namespace) -> int:
    settings = _settings()
    token = _token(settings)
    if token is None:
        return fail(NO_TOKEN)
    import discord

    from bot.app import build_app
    from bot.client import CoterieBot

    _setup_logging()
    app = await build_app(settings, recover=True)
    try:
        bot = CoterieBot(app=app, settings=settings)
    except BaseException:
        await app.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(bot.start(token), name="coterie-bot")
    stopper = asyncio.create_task(stop.wait(), name="coterie-stop")
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            log.info("coterie: stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        stopper.cancel()
        await bot.close()  # stops the app's services too
        await asyncio.gather(runner, stopper, return_exceptions=True)
    error = runner.exception() if not runner.cancelled() else None
    if error is None:
        return 0
    if isinstance(error, discord.LoginFailure):
        return fail("Discord rejected DISCORD_TOKEN; copy the token again from the portal", 1)
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return fail(
            "enable the Message Content intent for the bot in the developer portal (Bot > "
            "Privileged Gateway Intents)",
            1,
        )
    raise error


async def _sync(args: argparse.Namespace) -> int:
    settings = _settings()
    token = _token(settings)
    if token is None:
        return fail(NO_TOKEN)

    import discord

    from bot.client import CoterieBot

    # REST only: login() runs setup_hook (loads the cogs); no gateway connection.
    bot = CoterieBot(app=None, settings=settings, services=False)
    async with bot:
        try:
            await bot.login(token)
        except discord.LoginFailure:
            return fail("Discord rejected DISCORD_TOKEN; copy the token again from the portal", 1)
        if args.guild:
            guild = discord.Object(id=args.guild)
            bot.tree.copy_global_to(guild=guild)
            synced = await bot.tree.sync(guild=guild)
            print(f"synced {len(synced)} commands to guild {args.guild}")
        else:
            synced = await bot.tree.sync()
            print(f"synced {len(synced)} global commands (Discord may take a while to show them)")
    return 0
