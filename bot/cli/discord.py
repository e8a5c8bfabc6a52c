"""``coterie run``, ``coterie invite``, ``coterie sync``: the bot's Discord verbs.

The application id (for the invite URL) comes from ``COTERIE_APPLICATION_ID``
or, failing that, from the token: a bot token's first segment is the base64 of
the bot's user id, which equals the application id for every application
created since 2019.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import logging
import os
from typing import Any

from bot.cli._common import fail

__all__ = ["application_id_from_token", "invite_url", "register"]

log = logging.getLogger("coterie")

NO_TOKEN = "set DISCORD_TOKEN to the bot token from the Discord developer portal (Bot > Token)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run the Discord bot",
        description="Run the bot until SIGTERM or SIGINT, then finish the runs in flight "
        "(COTERIE_SHUTDOWN_GRACE_S) and stop. One `coterie run` per database.",
    )
    run.set_defaults(handler=_run, defer_gc=True)

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
    from bot.cli._common import load_settings

    return load_settings()


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


def _setup_logging(settings: Any = None) -> None:
    from bot.cli._logging import setup_logging

    setup_logging(settings)


async def _run(args: argparse.Namespace) -> int:
    settings = _settings()
    token = _token(settings)
    if token is None:
        return fail(NO_TOKEN)
    from bot.lifecycle import serve

    _setup_logging(settings)
    return await serve(settings, token)


async def _sync(args: argparse.Namespace) -> int:
    settings = _settings()
    token = _token(settings)
    if token is None:
        return fail(NO_TOKEN)

    import aiohttp
    import discord

    from bot.client import CoterieBot, discord_unreachable

    # REST only: login() runs setup_hook (loads the cogs); no gateway connection.
    bot = CoterieBot(app=None, settings=settings, services=False)
    async with bot:
        try:
            await bot.login(token)
            if args.guild:
                guild = discord.Object(id=args.guild)
                bot.tree.copy_global_to(guild=guild)
                synced = await bot.tree.sync(guild=guild)
                print(f"synced {len(synced)} commands to guild {args.guild}")
            else:
                synced = await bot.tree.sync()
                print(
                    f"synced {len(synced)} global commands (Discord may take a while to show them)"
                )
        except discord.LoginFailure:
            return fail("Discord rejected DISCORD_TOKEN; copy the token again from the portal")
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            unreachable = discord_unreachable(exc)
            if unreachable is not None:
                return fail(unreachable)
            if isinstance(exc, discord.Forbidden) and args.guild:
                return fail(
                    f"Discord refused the commands for guild {args.guild} ({exc.status}): is "
                    "the bot in that server, invited with the applications.commands scope "
                    "(coterie invite)?"
                )
            raise
    return 0
