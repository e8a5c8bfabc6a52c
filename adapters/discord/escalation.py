"""Critic stops and kills, posted to the guild's admin channel.

:class:`DiscordEscalator` implements :class:`executor.ports.Escalator`: it looks
up the run's guild's admin channel (the guild settings store) and posts one short
message there (run id, agent, member, reason, elapsed time, steps). The member
is named by a mention that never pings (``AllowedMentions.none()``), and so is
anything the reason quotes. A run with no guild, or a guild with no admin
channel, is only logged (:class:`adapters.services.escalation.Escalations` already
logs every escalation before it reaches this one).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import discord

from adapters.services.ports import GuildSettingsStore
from executor.ports import Escalation

__all__ = ["ChannelSender", "ClientSender", "DiscordEscalator", "render_escalation"]

log = logging.getLogger(__name__)

_LIMIT = 2000
_VERBS = {"kill": "killed", "stop": "stopped"}


@runtime_checkable
class ChannelSender(Protocol):
    """Posts a message to a channel by id (the Discord client, or a test's fake)."""

    async def send(self, channel_id: int, content: str) -> None: ...


class ClientSender:
    """Sends through a discord.py client, with no mentions allowed."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client

    async def send(self, channel_id: int, content: str) -> None:
        channel: Any = self.client.get_channel(channel_id)
        if channel is None:
            channel = await self.client.fetch_channel(channel_id)
        if not isinstance(channel, discord.abc.Messageable):
            raise TypeError(f"channel {channel_id} cannot receive messages")
        await channel.send(content, allowed_mentions=discord.AllowedMentions.none())


def render_escalation(escalation: Escalation) -> str:
    """The admin channel's message: one line of what, then the details."""
    e = escalation
    verb = _VERBS.get(e.action, e.action)
    member = f"<@{e.caller.user_id}>" if e.caller.user_id.isdigit() else e.caller.user_id
    reason = " ".join(e.reason.split()) or "(no reason given)"
    text = (
        f"**The critic {verb} a run** `{e.run_id}`\n"
        f"Agent: **{e.agent}** · Member: {member} ({e.caller.display_name})\n"
        f"Reason: {reason}\n"
        f"-# after {e.elapsed_s:.1f} s and {e.steps} step{'s' if e.steps != 1 else ''}"
    )
    return text if len(text) <= _LIMIT else text[: _LIMIT - 1] + "…"


class DiscordEscalator:
    """Posts stops and kills to the admin channel of the run's guild.

    ``client``: the discord.py client (used unless ``sender`` is given);
    ``settings``: the guild settings store (the admin channel).
    """

    def __init__(
        self,
        client: discord.Client | None,
        settings: GuildSettingsStore,
        *,
        sender: ChannelSender | None = None,
    ) -> None:
        if sender is None:
            if client is None:
                raise ValueError("DiscordEscalator needs a client or a sender")
            sender = ClientSender(client)
        self.sender = sender
        self.settings = settings

    async def admin_channel(self, guild_id: str) -> int | None:
        config = await self.settings.guild(guild_id)
        return int(config.admin_channel_id) if config.admin_channel_id else None

    async def escalate(self, escalation: Escalation) -> None:
        guild_id = escalation.caller.guild_id
        channel_id = await self.admin_channel(guild_id) if guild_id else None
        if channel_id is None:
            log.info(
                "critic %s run %s: no admin channel for guild %s; logged only",
                escalation.action,
                escalation.run_id,
                guild_id,
            )
            return
        try:
            await self.sender.send(channel_id, render_escalation(escalation))
        except discord.HTTPException:
            # Why not raise: the run is already stopped; a lost admin post is a log line.
            log.warning(
                "could not post run %s's %s to admin channel %s",
                escalation.run_id,
                escalation.action,
                channel_id,
                exc_info=True,
            )
