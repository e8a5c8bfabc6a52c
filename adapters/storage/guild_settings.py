"""Guild and channel settings (``guild_settings``, ``channel_settings``), typed and cached.

:class:`SqlGuildSettings` implements :class:`~adapters.services.ports.GuildSettingsStore`.
The chat flow reads a guild's config and a channel's default persona on every
message, so reads go through a short cache (``ttl_s``); a change made through this
store invalidates its entry at once. With several processes on PostgreSQL, a change
is also published (:attr:`SqlGuildSettings.publish`, ``NOTIFY``) and each other
process drops the entry when told (:meth:`SqlGuildSettings.invalidate`); without
that (or if a notification is lost) another process's change is seen within ``ttl_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.services.ports import GuildConfig, check_changes
from adapters.storage.db import IMMEDIATE
from adapters.storage.tables import ChannelSettings, GuildSettings

__all__ = ["SqlGuildSettings"]

log = logging.getLogger(__name__)

_MISSING = object()
# Booleans with a server default of false (never NULL).
_FLAGS = ("cost_footer", "memory_shared", "memory_confirm")


def _config(guild_id: str, row: GuildSettings | None) -> GuildConfig:
    if row is None:
        return GuildConfig(guild_id=guild_id)
    values = {name: getattr(row, name) for name in GuildConfig.field_names()}
    # JSON columns -> the config's immutable shapes.
    values["answer_channels"] = tuple(str(c) for c in row.answer_channels or ())
    values["answer_categories"] = tuple(str(c) for c in row.answer_categories or ())
    values["role_budgets"] = tuple(
        sorted((str(role), int(limit)) for role, limit in (row.role_budgets or {}).items())
    )
    for flag in _FLAGS:
        values[flag] = bool(getattr(row, flag))
    return GuildConfig(guild_id=guild_id, **values)


def _column_value(name: str, value: Any) -> Any:
    """A config value as its column holds it (tuples -> JSON lists and objects)."""
    if name in ("answer_channels", "answer_categories"):
        return [str(v) for v in value or ()]
    if name == "role_budgets":
        pairs = value.items() if isinstance(value, dict) else (value or ())
        return {str(role): int(limit) for role, limit in pairs}
    if name in _FLAGS:
        return bool(value)
    return value


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
        # Tells the other processes what changed ("guild:ID", "channel:ID"); None: alone.
        self.publish: Callable[[str], Awaitable[None]] | None = None

    # --- cache ---------------------------------------------------------------------

    def invalidate(self, key: str | None) -> None:
        """Another process changed ``key`` ("guild:ID", "channel:ID"); None: anything."""
        if key is None:
            self._cache.clear()
            return
        kind, _, ident = key.partition(":")
        self._cache.pop((kind, ident), None)
        if kind == "guild":
            self._cache.pop(("dms", ""), None)

    async def _changed(self, key: str) -> None:
        if self.publish is not None:
            try:
                await self.publish(key)
            except Exception:  # Why not raise: the change is saved; others see it by TTL
                log.warning("could not tell the other processes about %s", key, exc_info=True)

    def _cached(self, key: tuple[str, str]) -> Any:
        hit = self._cache.get(key)
        if hit is None or self._monotonic() - hit[0] > self.ttl_s:
            return _MISSING
        return hit[1]

    def _keep(self, key: tuple[str, str], value: Any) -> None:
        if len(self._cache) > 10_000:  # Why: bounded memory; a refill is one read each
            self._cache.clear()
        self._cache[key] = (self._monotonic(), value)

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
            await session.connection(execution_options=IMMEDIATE)
            row = await session.get(GuildSettings, guild_id)
            if row is None:
                row = GuildSettings(guild_id=guild_id)
            for name, value in changes.items():
                setattr(row, name, _column_value(name, value))
            session.add(row)
            await session.commit()
            config = _config(guild_id, row)
        self.invalidate(f"guild:{guild_id}")
        await self._changed(f"guild:{guild_id}")
        return config

    async def guilds_without_dms(self) -> frozenset[str]:
        key = ("dms", "")
        hit = self._cached(key)
        if hit is not _MISSING:
            found: frozenset[str] = hit
            return found
        table = GuildSettings.__table__  # type: ignore[attr-defined]
        stmt = select(table.c.guild_id).where(table.c.allow_dms.is_(False))
        async with self._sessions() as session:
            found = frozenset(await session.scalars(stmt))
        self._keep(key, found)
        return found

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
            await session.connection(execution_options=IMMEDIATE)
            row = await session.get(ChannelSettings, channel_id)
            if row is None:
                row = ChannelSettings(channel_id=channel_id, guild_id=guild_id)
            row.guild_id = guild_id
            row.default_persona = name
            session.add(row)
            await session.commit()
        self.invalidate(f"channel:{channel_id}")
        await self._changed(f"channel:{channel_id}")
