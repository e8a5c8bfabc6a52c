"""The skill service's host on Discord: who the owner is now, where a schedule posts,
and telling owners and admins when a schedule keeps failing.

:class:`DiscordSkillHost` implements :class:`adapters.services.skills.SkillHost`
(the owner as a caller with their privilege now, or None when they left; a surface
in the schedule's channel, refused with a reason when the channel is gone or the bot
may not post there, whose answers end with a footer saying which skill and schedule
made the post) and the scheduler's ``ScheduleEvents`` (a DM to the owner after
repeated failures; when the schedule is disabled, a DM and a line in the guild's
admin channel). Nothing it posts pings anyone.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import discord

from adapters.discord.dm import DirectMessages
from adapters.discord.escalation import ClientSender
from adapters.discord.identity import caller_of
from adapters.discord.surface import DeliveryOptions, DiscordSurface
from adapters.discord.webhooks import Webhooks
from adapters.services.conversation import HistoryLimits
from adapters.services.ports import GuildSettingsStore
from adapters.services.skills import HostUnavailable
from executor.agent import Caller
from executor.ports import Delivery

if TYPE_CHECKING:
    from personas.model import Persona
    from skills.schedules import ScheduleInfo

__all__ = ["DiscordSkillHost"]

log = logging.getLogger(__name__)


class _ChannelSurface(DiscordSurface):
    """A schedule's channel: its answers end with ``footer`` when there is one
    (``-# skill **digest** · schedule #3``).

    Why a footer and not the webhook's name: the name is the persona's, which is how a
    reply to the post finds the persona to continue with."""

    footer: str | None = None

    async def delivery(self, persona: Persona) -> Delivery:
        delivery = await super().delivery(persona)
        if self.footer:
            delivery.note(self.footer)
        return delivery


class DiscordSkillHost:
    def __init__(
        self,
        client: discord.Client,
        *,
        webhooks: Webhooks,
        guild_settings: GuildSettingsStore,
        limits: HistoryLimits | None = None,
        owner_ids: Collection[int] = (),
        options: DeliveryOptions | None = None,
    ) -> None:
        self.client = client
        self.webhooks = webhooks
        # Why a default: a scheduled post answers no message, so reads no history.
        self.limits = limits or HistoryLimits()
        self.guild_settings = guild_settings
        self.owner_ids = owner_ids
        self.options = options or DeliveryOptions()
        self._direct = DirectMessages(client)
        self._channels = ClientSender(client)

    # --- SkillHost -------------------------------------------------------------------

    async def member(self, guild_id: str, user_id: str) -> Caller | None:
        # Why wait: a slot caught up at start fires before the guilds are cached.
        await self.client.wait_until_ready()
        guild = self.client.get_guild(int(guild_id))
        if guild is None:
            return None
        member = guild.get_member(int(user_id))
        if member is None:
            try:
                member = await guild.fetch_member(int(user_id))
            except discord.NotFound:
                return None
        return caller_of(member, owner_ids=self.owner_ids)

    async def channel_surface(
        self, guild_id: str, channel_id: str, requester: Caller, *, footer: str | None = None
    ) -> DiscordSurface:
        await self.client.wait_until_ready()
        channel: Any = self.client.get_channel(int(channel_id))
        if channel is None:
            try:
                channel = await self.client.fetch_channel(int(channel_id))
            except (discord.NotFound, discord.Forbidden) as exc:
                raise HostUnavailable(f"its channel <#{channel_id}> no longer exists") from exc
        if not isinstance(channel, discord.TextChannel | discord.Thread):
            raise HostUnavailable(f"<#{channel_id}> is not a text channel")
        me = channel.guild.me
        perms = channel.permissions_for(me)
        can_send = (
            perms.send_messages_in_threads
            if isinstance(channel, discord.Thread)
            else (perms.send_messages)
        )
        if not (perms.view_channel and can_send):
            raise HostUnavailable(f"I may not post in <#{channel_id}> any more")
        me_id = self.client.user.id if self.client.user else None
        surface = _ChannelSurface(
            channel,
            requester_id=int(requester.user_id),
            bot_user_id=me_id,
            webhooks=self.webhooks,
            limits=self.limits,
            options=self.options,
        )
        surface.footer = footer
        return surface

    # --- ScheduleEvents --------------------------------------------------------------

    async def failing(self, schedule: ScheduleInfo, failures: int, error: str) -> None:
        await self._dm(
            schedule.created_by,
            f"Your schedule #{schedule.id} in <#{schedule.channel_id}> failed {failures} times "
            f"in a row. Last: {error}",
        )

    async def disabled(self, schedule: ScheduleInfo, reason: str) -> None:
        text = (
            f"Schedule #{schedule.id} (by <@{schedule.created_by}>, in <#{schedule.channel_id}>) "
            f"was turned off: {reason}"
        )
        await self._dm(schedule.created_by, f"Your {text[0].lower()}{text[1:]}")
        config = await self.guild_settings.guild(schedule.guild_id)
        if config.admin_channel_id:
            await self._post(int(config.admin_channel_id), text)

    async def _dm(self, user_id: str, text: str) -> None:
        try:
            await self._direct.send(user_id, text)
        except discord.HTTPException:
            log.info("could not DM %s about a schedule", user_id, exc_info=True)

    async def _post(self, channel_id: int, text: str) -> None:
        try:
            await self._channels.send(channel_id, text[:2000])
        except (discord.HTTPException, TypeError):
            log.warning("could not post to admin channel %s", channel_id, exc_info=True)
