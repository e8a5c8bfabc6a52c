"""The ``personas.ChannelDefaults`` port on the ``channel_settings`` table."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.tables import ChannelSettings, GuildSettings

__all__ = ["SqlChannelDefaults"]


class SqlChannelDefaults:
    """A channel's default persona, falling back to the guild's in :meth:`resolve`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def get(self, channel_id: str) -> str | None:
        async with self._sessions() as session:
            row = await session.get(ChannelSettings, channel_id)
            return row.default_persona if row is not None else None

    async def set(self, guild_id: str, channel_id: str, name: str | None) -> None:
        async with self._sessions() as session:
            row = await session.get(ChannelSettings, channel_id)
            if row is None:
                row = ChannelSettings(channel_id=channel_id, guild_id=guild_id)
            row.guild_id = guild_id
            row.default_persona = name
            session.add(row)
            await session.commit()

    async def resolve(self, guild_id: str | None, channel_id: str | None) -> str | None:
        """The channel's default, else the guild's, else None."""
        async with self._sessions() as session:
            if channel_id:
                channel = await session.get(ChannelSettings, channel_id)
                if channel is not None and channel.default_persona:
                    return channel.default_persona
            if guild_id:
                guild = await session.get(GuildSettings, guild_id)
                if guild is not None and guild.default_persona:
                    return guild.default_persona
        return None
