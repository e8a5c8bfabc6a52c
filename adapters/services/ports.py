"""What the services need from storage, as small protocols with in-memory defaults.

The services import neither discord nor SQLAlchemy; :mod:`adapters.storage`
implements these ports on the database (``SqlThreadStore``, ``SqlGuildSettings``)
and ``bot.app`` wires them in. The in-memory versions serve tests and the console.

- :class:`ThreadStore`: which persona owns which Discord thread.
- :class:`GuildSettingsStore`: a guild's typed :class:`GuildConfig` and each
  channel's default persona, read on every message (so the SQL one caches).
"""

from __future__ import annotations

from collections.abc import Iterable
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
    """A guild's settings (``/config``). A guild that never set anything gets these
    defaults, which mean "use the deployment's" (None, or empty) for every field.

    - where coterie answers: ``answer_channels`` / ``answer_categories`` (channel
      and category ids; both empty: every channel); ``allow_dms`` (None: the
      deployment's ``COTERIE_ALLOW_DMS``);
    - ``admin_channel_id``: where critic stops and kills are posted;
    - ``default_persona``, ``default_tier`` (runs of agents on the deployment's
      default tier use this one), ``timezone`` (IANA name: days of charts and spend);
    - ``budget_default_micros``: members' rolling 7-day limit asked from here;
      ``role_budgets``: (role id, limit) pairs, the most generous of a member's
      roles winning over the guild's default (a member's own override wins over both);
    - the critic's limits for runs started here: ``critic_soft_runtime_s``,
      ``critic_soft_steps`` and ``critic_hard_runtime_s`` (a run's time bound);
    - ``cost_footer``: answers end with ``-# $0.0042 · model · 3.1 s``;
    - memory: ``memory`` (None: on, False: personas neither read nor keep notes here),
      ``memory_shared`` (the guild's personas share what they know about a member here),
      ``memory_confirm`` (the member confirms each save with a button).
    """

    guild_id: str
    default_persona: str | None = None
    admin_channel_id: str | None = None
    answer_channels: tuple[str, ...] = ()
    answer_categories: tuple[str, ...] = ()
    allow_dms: bool | None = None
    default_tier: str | None = None
    timezone: str | None = None
    budget_default_micros: int | None = None
    role_budgets: tuple[tuple[str, int], ...] = ()
    critic_soft_runtime_s: float | None = None
    critic_soft_steps: int | None = None
    critic_hard_runtime_s: float | None = None
    cost_footer: bool = False
    memory: bool | None = None
    memory_shared: bool = False
    memory_confirm: bool = False

    @property
    def memory_on(self) -> bool:
        return self.memory is not False

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "guild_id")

    @property
    def answers_everywhere(self) -> bool:
        return not self.answer_channels and not self.answer_categories

    def answers_in(self, channel_id: str | None, category_id: str | None = None) -> bool:
        """Whether coterie answers in this channel (a thread: its parent channel)."""
        if self.answers_everywhere:
            return True
        if channel_id is not None and channel_id in self.answer_channels:
            return True
        return category_id is not None and category_id in self.answer_categories

    def role_budget(self, roles: Iterable[str]) -> int | None:
        """The most generous role limit among ``roles``, or None when none has one."""
        mine = set(roles)
        found = [limit for role, limit in self.role_budgets if role in mine]
        return max(found) if found else None


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

    async def guilds_without_dms(self) -> frozenset[str]:
        """The guilds whose admins turned DMs off (``allow_dms`` False)."""
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

    async def guilds_without_dms(self) -> frozenset[str]:
        return frozenset(g for g, c in self._guilds.items() if c.allow_dms is False)

    async def set_channel_persona(self, guild_id: str, channel_id: str, name: str | None) -> None:
        if name is None:
            self._channels.pop(channel_id, None)
        else:
            self._channels[channel_id] = (guild_id, name)
