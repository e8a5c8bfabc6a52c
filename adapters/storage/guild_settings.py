"""Guild and channel settings (``guild_settings``, ``channel_settings``), typed and cached.

:class:`SqlGuildSettings` implements :class:`~adapters.services.ports.GuildSettingsStore`.
The chat flow reads a guild's config and a channel's default persona on every
message, so reads go through a short cache (``ttl_s``); a change made through this
store invalidates its entry at once, and another process's change is seen within
``ttl_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.services.ports import GuildConfig, check_changes
from adapters.storage.tables import ChannelSettings, GuildSettings

__all__ = ["SqlGuildSettings"]

_MISSING = object()


def _config(guild_id: str, row: GuildSettings | None) -> GuildConfig:
    if row is None:
        return GuildConfig(guild_id=guild_id)
    return GuildConfig(
        guild_id=guild_id,
        **{name: getattr(row, name) for name in GuildConfig.field_names()},
    )


class SqlGuildSettings:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        ttl_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}

    # --- cache ---------------------------------------------------------------------

    def _cached(self, key: tuple[str, str]) -> Any:
        hit = self._cache.get(key)
        if hit is None or self._monotonic() - hit[0] > self.ttl_s:
            return _MISSING
        return hit[1]

    def _keep(self, key: tuple[str, str], value: Any) -> None:
        if len(self._cache) > 10_000:  # Why: bounded memory; a refill is one read each
            self._cache.clear()
        self._cache[key] = (self._monotonic(), value)

    def invalidate(self) -> None:
        self._cache.clear()

    # --- guilds --------------------------------------------------------------------

    async def guild(self, guild_id: str) -> GuildConfig:
        key = ("guild", guild_id)
        hit = self._cached(key)
        if hit is not _MISSING:
            config: GuildConfig = hit
            return config
        async with self._sessions() as session:
            row = await session.get(GuildSettings, guild_id)
            config = _config(guild_id, row)
        self._keep(key, config)
        return config

    async def update_guild(self, guild_id: str, **changes: Any) -> GuildConfig:
        check_changes(changes)
        async with self._sessions() as session:
            row = await session.get(GuildSettings, guild_id)
            if row is None:
                row = GuildSettings(guild_id=guild_id)
            for name, value in changes.items():
                setattr(row, name, value)
            session.add(row)
            await session.commit()
            config = _config(guild_id, row)
        self._cache.pop(("guild", guild_id), None)
        return config

    # --- channels ------------------------------------------------------------------

    async def channel_persona(self, channel_id: str) -> str | None:
        key = ("channel", channel_id)
        hit = self._cached(key)
        if hit is not _MISSING:
            name: str | None = hit
            return name
        async with self._sessions() as session:
            row = await session.get(ChannelSettings, channel_id)
            found = row.default_persona if row is not None else None
        self._keep(key, found)
        return found

    async def set_channel_persona(self, guild_id: str, channel_id: str, name: str | None) -> None:
        async with self._sessions() as session:
            row = await session.get(ChannelSettings, channel_id)
            if row is None:
                row = ChannelSettings(channel_id=channel_id, guild_id=guild_id)
            row.guild_id = guild_id
            row.default_persona = name
            session.add(row)
            await session.commit()
        self._cache.pop(("channel", channel_id), None)
