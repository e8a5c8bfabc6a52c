"""Where a channel's default persona is kept: a port, implemented in ``adapters``.

``personas`` may not import ``adapters`` (the layers point down), so the cog reaches
the stored default through this protocol. ``InMemoryChannelDefaults`` is the
shipped default for tests and the console.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["ChannelDefaults", "InMemoryChannelDefaults"]


@runtime_checkable
class ChannelDefaults(Protocol):
    async def get(self, channel_id: str) -> str | None:
        """The channel's default persona name, or None when it has none."""
        ...

    async def set(self, guild_id: str, channel_id: str, name: str | None) -> None:
        """Set (or, with None, clear) the channel's default persona."""
        ...


class InMemoryChannelDefaults:
    def __init__(self) -> None:
        self._by_channel: dict[str, tuple[str, str]] = {}

    async def get(self, channel_id: str) -> str | None:
        found = self._by_channel.get(channel_id)
        return found[1] if found else None

    async def set(self, guild_id: str, channel_id: str, name: str | None) -> None:
        if name is None:
            self._by_channel.pop(channel_id, None)
        else:
            self._by_channel[channel_id] = (guild_id, name)
