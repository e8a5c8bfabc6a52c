"""Persona webhooks: one per channel, created once and reused.

The ids of coterie's webhooks tell a persona's earlier messages from a member's
(:meth:`Webhooks.is_ours`), so a reply to a persona is answered and a thread's
history reads the persona's turns as the assistant's.

Across restarts: the ids are not stored anywhere; they are read back from Discord.
A webhook is ours when the bot created it (its ``user`` is the bot, or its
``application_id`` is the bot's application). Before the client dispatches a reply
or a thread message from a channel whose webhooks it has not read yet
(``CoterieBot.dispatch``), :meth:`Webhooks.look` lists them once (one request per
channel per process, the one :meth:`for_channel` makes anyway), so the chat flow's
synchronous :meth:`is_ours` is right from the first message after a restart.
Listing needs Manage Webhooks, the permission persona webhooks need in the first
place; without it the personas speak as the bot, recognised by their author.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord

from adapters.discord.outbox import Outbox

__all__ = ["WEBHOOK_NAME", "Webhooks"]

log = logging.getLogger(__name__)

WEBHOOK_NAME = "coterie"


def _parent(channel: Any) -> Any:
    return channel.parent if isinstance(channel, discord.Thread) else channel


class Webhooks:
    """One webhook per channel, created once and reused; ``None`` where not allowed.

    ``outbox``: the process's turns at Discord's rate-limit buckets and its queue
    boards (:class:`~adapters.discord.outbox.Outbox`), kept here because this is the
    one object every delivery of the process (chat and scheduler) shares.

    ``lookup_timeout_s``: how long an answer waits for its channel's webhook to be
    looked up (listed, made) before it goes out as the bot's own message instead (a
    Discord slow to answer, a bucket spent); the next answer looks again."""

    def __init__(self, *, lookup_timeout_s: float = 10.0) -> None:
        self.lookup_timeout_s = lookup_timeout_s
        self.outbox = Outbox()
        self._by_channel: dict[int, discord.Webhook | None] = {}
        self.ids: set[int] = set()
        self._listed: set[int] = set()  # channels whose webhooks we have read
        self._finding: dict[int, asyncio.Lock] = {}  # one look per channel at a time

    def is_ours(self, webhook_id: int) -> bool:
        """One of the persona webhooks this process has used or recognised."""
        return webhook_id in self.ids

    def forget(self, channel_id: int) -> None:
        self._by_channel.pop(channel_id, None)
        self._listed.discard(channel_id)

    def needs_look(self, message: discord.Message) -> bool:
        """Whether ``message``'s conversation may hold persona messages from webhooks
        this process has not seen: a reply, or a message in a thread, in a channel
        whose webhooks have not been read yet."""
        channel = _parent(message.channel)
        if not isinstance(channel, discord.TextChannel) or channel.id in self._listed:
            return False
        return message.reference is not None or isinstance(message.channel, discord.Thread)

    async def look(self, message: discord.Message) -> None:
        """Read the webhooks of ``message``'s channel (a thread's parent) once."""
        channel = _parent(message.channel)
        if isinstance(channel, discord.TextChannel) and channel.id not in self._listed:
            await self._list(channel)

    def _mine(self, hook: discord.Webhook, me: discord.abc.Snowflake) -> bool:
        app_id = getattr(hook, "application_id", None)
        return (hook.user is not None and hook.user.id == me.id) or (
            app_id is not None and app_id == me.id
        )

    async def _list(self, channel: discord.TextChannel) -> list[discord.Webhook]:
        """The channel's webhooks that are ours (recorded); [] when we may not look."""
        self._listed.add(channel.id)
        me = channel.guild.me
        if not channel.permissions_for(me).manage_webhooks:
            self._listed.discard(channel.id)  # an admin may grant it later
            return []
        try:
            hooks = await channel.webhooks()
        except discord.HTTPException:
            log.info("cannot list the webhooks of #%s", channel)
            self._listed.discard(channel.id)
            return []
        ours = [h for h in hooks if self._mine(h, me)]
        self.ids.update(h.id for h in ours)
        return ours

    def known(self, channel: Any) -> tuple[bool, discord.Webhook | None]:
        """``(True, the webhook or None)`` when :meth:`for_channel` would answer without
        a request to Discord (cached, not a text channel, no permission to manage
        webhooks); ``(False, None)`` when it must look first."""
        channel = _parent(channel)
        if not isinstance(channel, discord.TextChannel):
            return True, None
        if channel.id in self._by_channel:
            return True, self._by_channel[channel.id]
        if not channel.permissions_for(channel.guild.me).manage_webhooks:
            return True, None
        return False, None

    async def for_channel(self, channel: Any) -> discord.Webhook | None:
        """The webhook of ``channel`` (a thread's parent for a thread) or None."""
        known, hook = self.known(channel)
        if known:
            return hook  # None without permission is not cached: an admin may grant it
        channel = _parent(channel)
        # Why one at a time: a burst of mentions in a channel not used yet asked
        # together, each listing its webhooks (29 GETs in a 300-run queue) and, where
        # there was none, each making one.
        lock = self._finding.setdefault(channel.id, asyncio.Lock())
        async with lock:
            if channel.id in self._by_channel:
                return self._by_channel[channel.id]
            return await self._find(channel)

    async def _find(self, channel: discord.TextChannel) -> discord.Webhook | None:
        hook: discord.Webhook | None = None
        try:
            for existing in await self._list(channel):
                if existing.token:
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
