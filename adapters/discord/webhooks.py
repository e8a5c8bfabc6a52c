"""Persona webhooks: one per channel, created once and reused.

The ids of coterie's webhooks tell a persona's earlier messages from a member's
(:meth:`Webhooks.is_ours`), so a reply to a persona is answered and a thread's
history reads the persona's turns as the assistant's.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

__all__ = ["WEBHOOK_NAME", "Webhooks"]

log = logging.getLogger(__name__)

WEBHOOK_NAME = "coterie"


class Webhooks:
    """One webhook per channel, created once and reused; ``None`` where not allowed."""

    def __init__(self) -> None:
        self._by_channel: dict[int, discord.Webhook | None] = {}
        self.ids: set[int] = set()

    def is_ours(self, webhook_id: int) -> bool:
        """One of the persona webhooks this process has used."""
        return webhook_id in self.ids

    def forget(self, channel_id: int) -> None:
        self._by_channel.pop(channel_id, None)

    async def for_channel(self, channel: Any) -> discord.Webhook | None:
        """The webhook of ``channel`` (a thread's parent for a thread) or None."""
        if isinstance(channel, discord.Thread):
            channel = channel.parent
        if not isinstance(channel, discord.TextChannel):
            return None
        if channel.id in self._by_channel:
            return self._by_channel[channel.id]
        if not channel.permissions_for(channel.guild.me).manage_webhooks:
            return None  # not cached: an admin may grant it later
        hook: discord.Webhook | None = None
        try:
            me = channel.guild.me.id
            for existing in await channel.webhooks():
                if existing.user is not None and existing.user.id == me and existing.token:
                    hook = existing
                    break
            if hook is None:
                hook = await channel.create_webhook(name=WEBHOOK_NAME)
        except discord.HTTPException:
            log.warning("cannot use a webhook in #%s; personas speak as the bot", channel)
            hook = None
        self._by_channel[channel.id] = hook
        if hook is not None:
            self.ids.add(hook.id)
        return hook
