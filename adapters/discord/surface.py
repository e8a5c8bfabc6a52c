"""The chat flow's :class:`~adapters.services.chat.ChatSurface` on Discord.

A :class:`DiscordSurface` points at one channel, thread or DM, and optionally at
the member's message being answered. It reads history (the thread's, the DM's or
the reply chain) into turns, opens a ``/chat`` thread, and opens the delivery that
speaks as a persona (through the channel's webhook where allowed).
:func:`incoming` reads the facts the flow decides on off a Discord message.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import discord

from adapters.discord.delivery import open_delivery
from adapters.discord.history import (
    AttachmentTexts,
    dm_history,
    reply_chain,
    thread_history,
    turn_from_message,
)
from adapters.discord.identity import caller_from_message
from adapters.discord.outbox import is_board
from adapters.discord.split import no_pings
from adapters.discord.streaming import RETRY_DELAYS
from adapters.discord.webhooks import Webhooks
from adapters.services.approval import ApprovalService
from adapters.services.chat import HistorySource, IncomingMessage
from adapters.services.conversation import HistoryLimits, Turn
from executor.ports import Clock, Delivery
from personas.model import Persona

__all__ = ["DeliveryOptions", "DiscordSurface", "category_of", "incoming", "is_ours"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DeliveryOptions:
    """How answers are streamed (the cog's knobs; tests shorten them).

    ``edit_interval``: seconds between text edits, counted from the first words (which
    go at once); ``retry_delays``: the waits between tries of a send or edit lost in
    transit. (The queue board's timing is the process's, on ``Webhooks.outbox``.)"""

    edit_interval: float = 1.0
    retry_delays: tuple[float, ...] = RETRY_DELAYS
    approval_timeout: float = 120.0
    clock: Clock | None = None


def is_ours(message: discord.Message, *, bot_user_id: int | None, webhooks: Webhooks) -> bool:
    """Written by the bot itself or by one of its persona webhooks."""
    if bot_user_id is not None and message.author.id == bot_user_id:
        return True
    return message.webhook_id is not None and webhooks.is_ours(message.webhook_id)


def category_of(channel: Any) -> str | None:
    """The category of a channel (a thread: its parent's), as the settings key it."""
    if isinstance(channel, discord.Thread):
        channel = channel.parent
    category_id = getattr(channel, "category_id", None)
    return str(category_id) if category_id else None


def incoming(
    message: discord.Message,
    *,
    bot_user_id: int,
    webhooks: Webhooks,
    owner_ids: Collection[int] = (),
) -> IncomingMessage:
    channel = message.channel
    thread = channel if isinstance(channel, discord.Thread) else None
    ref = message.reference
    replied = ref.resolved if ref is not None else None
    return IncomingMessage(
        caller=caller_from_message(message, owner_ids=owner_ids),
        guild_id=str(message.guild.id) if message.guild else None,
        channel_id=str(thread.parent_id if thread else channel.id),
        thread_id=str(thread.id) if thread else None,
        category_id=category_of(channel),
        mentions_bot=any(u.id == bot_user_id for u in message.mentions),
        replies_to_ours=isinstance(replied, discord.Message)
        and is_ours(replied, bot_user_id=bot_user_id, webhooks=webhooks),
        is_reply=ref is not None,
    )


class DiscordSurface:
    """Speaks in ``target``; ``message`` is the member's message being answered. A tool
    call that needs approval asks ``requester_id`` (a question in ``approvals``: the
    client's, so that its buttons work in any process)."""

    def __init__(
        self,
        target: discord.abc.Messageable,
        *,
        requester_id: int,
        bot_user_id: int | None,
        webhooks: Webhooks,
        approvals: ApprovalService,
        limits: HistoryLimits,
        message: discord.Message | None = None,
        options: DeliveryOptions | None = None,
        use_webhooks: bool = True,
        client: discord.Client | None = None,
        texts: AttachmentTexts | None = None,
    ) -> None:
        self.target = target
        self.message = message
        self.reference: discord.Message | None = message
        self.requester_id = requester_id
        self.bot_user_id = bot_user_id
        self.webhooks = webhooks
        self.approvals = approvals
        self.limits = limits
        self.options = options or DeliveryOptions()
        self.use_webhooks = use_webhooks
        self.client = client
        self.texts = texts

    async def shares_guild(self, *, excluding: Collection[str]) -> bool:
        """Whether the member is in one of the bot's guilds other than ``excluding``
        (a DM's question: some guild turned DMs off). Asks Discord for the member
        only in guilds not excluded, stopping at the first."""
        if self.client is None:
            return False
        for guild in self.client.guilds:
            if str(guild.id) in excluding:
                continue
            if guild.get_member(self.requester_id) is not None:
                return True
            try:
                await guild.fetch_member(self.requester_id)
            except discord.NotFound:
                continue
            except discord.HTTPException:
                log.info("could not look up member %s in %s", self.requester_id, guild.id)
                continue
            return True
        return False

    def _is_ours(self, message: discord.Message) -> bool:
        return is_ours(message, bot_user_id=self.bot_user_id, webhooks=self.webhooks)

    async def history(self, source: HistorySource, *, max_messages: int) -> list[Turn]:
        msg = self.message
        if msg is None:
            return []
        channel = msg.channel
        if source == "thread" and isinstance(channel, discord.Thread):
            messages = await thread_history(channel, msg, max_messages=max_messages)
        elif source == "dm" and isinstance(channel, discord.DMChannel):
            messages = await dm_history(channel, msg, max_messages=max_messages)
        else:
            messages = await reply_chain(msg, max_messages=max_messages)
        # Why: a queue board in a thread or DM is the bot's, not a turn of the conversation.
        messages = [m for m in messages if not (self._is_ours(m) and is_board(m.content))]
        return [
            await turn_from_message(
                m,
                is_ours=self._is_ours,
                bot_id=self.bot_user_id,
                limits=self.limits,
                texts=self.texts,
            )
            for m in messages
        ]

    async def open_thread(self, name: str, starter: str) -> str | None:
        channel = self.target
        first = await channel.send(starter, allowed_mentions=no_pings())
        self.reference = first
        if not isinstance(channel, discord.TextChannel):
            return None
        try:
            thread = await first.create_thread(name=name)
        except discord.HTTPException:
            log.info("cannot create a thread in #%s; answering in the channel", channel)
            return None
        self.target, self.reference = thread, None
        return str(thread.id)

    async def delivery(self, persona: Persona) -> Delivery:
        return await open_delivery(
            self.target,
            persona=persona.name,
            avatar_url=persona.avatar_url,
            requester_id=self.requester_id,
            approvals=self.approvals,
            webhooks=self.webhooks if self.use_webhooks else None,
            reference=self.reference,
            clock=self.options.clock,
            interval=self.options.edit_interval,
            retry_delays=self.options.retry_delays,
            approval_timeout=self.options.approval_timeout,
            outbox=self.webhooks.outbox,
        )
