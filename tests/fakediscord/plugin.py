"""pytest fixtures for the fake Discord. Register with
``pytest_plugins = ["tests.fakediscord.plugin"]`` in ``tests/conftest.py``.

Fixtures:

``fake_discord``
    A started :class:`FakeDiscord` with discord.py pointed at it (REST base and
    gateway), restored afterwards.
``bot_factory``
    ``(fake) -> commands.Bot`` (or an awaitable of one). The default builds a
    :class:`bot.client.CoterieBot` with :class:`FakeApp`, the fake's guild as
    dev guild and no extensions. Override it in a test module to build the bot
    with your own services and cogs.
``discord_bot``
    The bot from ``bot_factory``, logged in and connected to the fake, ready
    (on_ready fired); closed cleanly afterwards.

``run_bot(fake, bot)`` is the async context manager behind ``discord_bot``, for
tests that need to start a bot themselves.
"""

from __future__ import annotations

import asyncio
import inspect
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

from tests.fakediscord.server import FakeDiscord

# Why: discord.py imports the deprecated `audioop` (voice support) and pytest runs
# with filterwarnings=error; import it once here, with that one warning silenced.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import App
    from bot.client import CoterieBot

__all__ = ["BotFactory", "FakeApp", "NoSkills", "run_bot"]

AnyBot = commands.Bot | commands.AutoShardedBot
BotFactory = Callable[[FakeDiscord], "AnyBot | Awaitable[AnyBot]"]
BotT = TypeVar("BotT", bound=AnyBot)

# Why: discord.py waits this long after the last GUILD_CREATE before on_ready (2 s by default).
GUILD_READY_TIMEOUT = 0.05


class NoSkills:
    """A skill service that is never asked to run anything: where the client plugs
    its host in (``setup_hook``), for test apps without skills."""

    def __init__(self) -> None:
        self.host: object = None


class FakeApp:
    """A composition root with next to nothing in it; records start/close."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from adapters.services.conversation import HistoryLimits
        from adapters.services.escalation import Escalations
        from adapters.services.ports import InMemoryGuildSettings

        self.started = 0
        self.closed = 0
        self.escalations = Escalations()
        self.guild_settings = InMemoryGuildSettings()
        self.skill_service = NoSkills()
        self.chat = SimpleNamespace(limits=HistoryLimits())

    async def start(self) -> None:
        self.started += 1

    async def close(self) -> None:
        self.closed += 1


def coterie_bot(fake: FakeDiscord, *, app: object = None, **kwargs: Any) -> CoterieBot:
    """A CoterieBot for the fake: its guild is the dev guild unless ``settings`` is given.

    ``app`` is any object with what the loaded cogs use (default: a :class:`FakeApp`).
    """
    from bot.client import CoterieBot
    from bot.settings import Settings

    settings = kwargs.pop("settings", None) or Settings(
        _env_file=None,
        dev_guild_id=fake.guild.id,
        discord_token=fake.token,
    )
    kwargs.setdefault("extensions", ())
    kwargs.setdefault("guild_ready_timeout", GUILD_READY_TIMEOUT)
    # Why a cast: a test's app holds only what its cogs (and setup_hook) use, not a whole App.
    the_app = cast("App", app if app is not None else FakeApp())
    bot = CoterieBot(app=the_app, settings=settings, **kwargs)
    bot.before_identify_hook = _identify_now  # type: ignore[method-assign]
    return bot


async def _identify_now(shard_id: int | None, *, initial: bool = False) -> None:
    # Why: discord.py sleeps 5 s before re-IDENTIFYing (Discord's rate limit); the fake has none.
    return None


@asynccontextmanager
async def run_bot(fake: FakeDiscord, bot: BotT, *, timeout: float = 10.0) -> AsyncIterator[BotT]:
    """Log ``bot`` in to ``fake`` (setup_hook runs), connect, wait for ready; close on exit."""
    connect: asyncio.Task[None] | None = None
    try:
        await bot.login(fake.token)
        connect = asyncio.create_task(bot.connect(reconnect=True), name="fake-discord-connect")
        ready = asyncio.create_task(bot.wait_until_ready(), name="fake-discord-ready")
        done, _ = await asyncio.wait(
            {connect, ready}, timeout=timeout, return_when="FIRST_COMPLETED"
        )
        if ready not in done:
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
            if connect in done:
                connect.result()  # raises what stopped the connection
                raise AssertionError("the bot disconnected before it was ready")
            raise AssertionError(f"the bot was not ready after {timeout}s")
        yield bot
    finally:
        await bot.close()
        if connect is not None:
            await asyncio.wait_for(connect, timeout)


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        with fake.patch_discord():
            yield fake


@pytest.fixture
def bot_factory() -> BotFactory:
    return coterie_bot


@pytest.fixture
async def discord_bot(fake_discord: FakeDiscord, bot_factory: BotFactory) -> AsyncIterator[AnyBot]:
    made = bot_factory(fake_discord)
    bot = await made if inspect.isawaitable(made) else made
    async with run_bot(fake_discord, bot) as running:
        yield running
