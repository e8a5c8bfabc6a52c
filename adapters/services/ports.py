"""What the services need from storage, as small protocols with in-memory defaults.

The services import neither discord nor SQLAlchemy; :mod:`adapters.storage`
implements these ports on the database (``SqlThreadStore``, ``SqlGuildSettings``)
and ``bot.app`` wires them in. The in-memory versions serve tests and the console.

- :class:`ThreadStore`: which persona owns which Discord thread.
- :class:`GuildSettingsStore`: a guild's typed :class:`GuildConfig` and each
  channel's default persona, read on every message (so the SQL one caches).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from executor.ports import utcnow

__all__ = [
    "Binding",
    "GuildConfig",
    "GuildSettingsStore",
    "InMemoryGuildSettings",
    "InMemoryThreadStore",
    "ThreadStore",
    "check_changes",
]


# --- thread bindings ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Binding:
    thread_id: str
    guild_id: str
    channel_id: str  # the parent channel
    persona: str
    created_by: str
    created_at: datetime


@runtime_checkable
class ThreadStore(Protocol):
    async def get(self, thread_id: str) -> Binding | None: ...

    async def bind(
        self, *, thread_id: str, guild_id: str, channel_id: str, persona: str, created_by: str
    ) -> Binding: ...

    async def unbind(self, thread_id: str) -> bool: ...


class InMemoryThreadStore:
    def __init__(self) -> None:
        self._by_id: dict[str, Binding] = {}

    async def get(self, thread_id: str) -> Binding | None:
        return self._by_id.get(thread_id)

    async def bind(
        self, *, thread_id: str, guild_id: str, channel_id: str, persona: str, created_by: str
    ) -> Binding:
        b = Binding(thread_id, guild_id, channel_id, persona, created_by, utcnow())
        self._by_id[thread_id] = b
        return b

    async def unbind(self, thread_id: str) -> bool:
        return self._by_id.pop(thread_id, None) is not None

    async def delete_user_data(self, user_id: str) -> int:
        gone = [t for t, b in self._by_id.items() if b.created_by == user_id]
        for t in gone:
            del self._by_id[t]
        return len(gone)


# --- guild settings -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuildConfig:
    """A guild's settings. A guild that never set anything gets these defaults,
    which mean "use the deployment's" (None) for every field."""

    guild_id: str
    default_persona: str | None = None
    admin_channel_id: str | None = None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "guild_id")


@runtime_checkable
class GuildSettingsStore(Protocol):
    async def guild(self, guild_id: str) -> GuildConfig:
        """The guild's settings (defaults when it has none)."""
        ...

    async def update_guild(self, guild_id: str, **changes: Any) -> GuildConfig:
        """Set some fields of the guild's settings (None clears one); returns the new."""
        ...

    async def channel_persona(self, channel_id: str) -> str | None:
        """The channel's own default persona, or None."""
        ...

    async def set_channel_persona(self, guild_id: str, channel_id: str, name: str | None) -> None:
        """Set (or, with None, clear) the channel's default persona."""
        ...


def check_changes(changes: dict[str, Any]) -> None:
    unknown = set(changes) - set(GuildConfig.field_names())
    if unknown:
        raise ValueError(f"unknown guild setting(s): {', '.join(sorted(unknown))}")


class InMemoryGuildSettings:
    def __init__(self) -> None:
        self._guilds: dict[str, GuildConfig] = {}
        self._channels: dict[str, tuple[str, str]] = {}

    async def guild(self, guild_id: str) -> GuildConfig:
        return self._guilds.get(guild_id) or GuildConfig(guild_id=guild_id)

    async def update_guild(self, guild_id: str, **changes: Any) -> GuildConfig:
        check_changes(changes)
        new = replace(await self.guild(guild_id), **changes)
        self._guilds[guild_id] = new
        return new

    async def channel_persona(self, channel_id: str) -> str | None:
        found = self._channels.get(channel_id)
        return found[1] if found else None

    async def set_channel_persona(self, guild_id: str, channel_id: str, name: str | None) -> None:
        if name is None:
            self._channels.pop(channel_id, None)
        else:
            self._channels[channel_id] = (guild_id, name)
