"""``bot.lifecycle.serve`` in process, against the fake Discord: the order of a start
and of a stop, and the refusals before connecting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import discord
import pytest

from adapters.storage.lock import InstanceLock, holds_lock
from bot.app import App, build_app
from bot.lifecycle import Shutdown, serve
from bot.settings import Settings
from executor.errors import ConfigError
from executor.testing import ScriptedModel
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import coterie_bot


class _Resolver:
    """One scripted model for every tier."""

    default_tier = "standard"
    tiers = ("standard",)

    def __init__(self) -> None:
        self.model = ScriptedModel(["hello"])

    def resolve(self, tier: str) -> Any:
        return self.model

    def estimate_micros(self, tier: str, input_tokens: int, output_tokens: int) -> int:
        return 0


def _settings(tmp_path: Path, fake: FakeDiscord, **extra: Any) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        discord_token=fake.token,
        dev_guild_id=fake.guild.id,
        **extra,
    )


async def test_start_and_stop_happen_in_order(
    fake_discord: FakeDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, fake_discord, shutdown_grace_s=5)
    order: list[str] = []
    shutdown = Shutdown()

    def recorded(name: str, fn: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            order.append(name)
            return await fn(*args, **kwargs)

        return call

    async def build(settings: Settings, **options: Any) -> App:
        # Crash recovery runs only while the lock is held, and only for `coterie run`.
        assert options == {"recover": True, "instance": "bot", "warm": True}
        assert holds_lock(settings.database_url)
        order.append("build")
        app = await build_app(settings, resolver=_Resolver(), **options)
        real_drain = app.runner.drain

        async def drain(grace_s: float, **kwargs: Any) -> Any:
            # A question a cut run leaves says the restart cut it.
            assert kwargs["before_cut"] == app.approvals.restarting
            return await real_drain(grace_s, **kwargs)

        app.runner.drain = recorded("drain", drain)  # type: ignore[method-assign]
        app.stop_intake = recorded("stop intake", app.stop_intake)  # type: ignore[method-assign]
        app._closers = [
            recorded(f"close {type(c.__self__).__name__}", c)  # type: ignore[attr-defined]
            for c in app._closers
        ]
        return app

    def make_bot(app: App) -> Any:
        bot = coterie_bot(fake_discord, app=app, settings=settings)

        async def ready() -> None:
            order.append("ready")
            shutdown.request("test")

        bot.add_listener(ready, "on_ready")
        return bot

    real_close = discord.AutoShardedClient.close

    async def discord_close(self: discord.AutoShardedClient) -> None:
        order.append("close discord")
        await real_close(self)

    monkeypatch.setattr(discord.AutoShardedClient, "close", discord_close)

    code = await serve(
        settings, fake_discord.token, build=build, make_bot=make_bot, shutdown=shutdown
    )
    assert code == 0
    assert order == [
        "build",
        "ready",
        "stop intake",
        "drain",
        "close discord",
        "close ToolRegistry",  # tool sources (MCP servers) stop once the runs are over
        "close SqlCheckpoints",
        "close SqlAuditSink",
        "close Membership",  # deregistered after the audit's last flush
        "close Database",
    ]
    # The lock was released: another instance may start now.
    lock = await InstanceLock.acquire(settings.database_url)
    await lock.release()


async def test_no_model_for_the_default_tier_is_one_line_before_connecting(
    fake_discord: FakeDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "COTERIE_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    settings = _settings(tmp_path, fake_discord)
    with pytest.raises(ConfigError) as caught:
        await serve(settings, fake_discord.token)
    text = str(caught.value)
    assert "no model can answer" in text and "standard" in text
    assert "ANTHROPIC_API_KEY or OPENAI_API_KEY" in text
    assert fake_discord.gateway_frames == []  # never connected
    lock = await InstanceLock.acquire(settings.database_url)  # and let the lock go
    await lock.release()


async def test_an_unknown_enabled_tool_is_named(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    settings = _settings(tmp_path, fake_discord, enabled_tools=["calculator", "nosuchtool"])

    async def build(settings: Settings, **options: Any) -> App:
        return await build_app(settings, resolver=_Resolver(), **options)

    with pytest.raises(ConfigError, match="COTERIE_ENABLED_TOOLS names 'nosuchtool'"):
        await serve(settings, fake_discord.token, build=build)
