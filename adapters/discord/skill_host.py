"""The skill service's host on Discord: who the owner is now, where a schedule posts,
and telling owners and admins when a schedule keeps failing.

:class:`DiscordSkillHost` implements :class:`adapters.services.skills.SkillHost`
(the owner as a caller with their privilege now, or None when they left; a surface
in the schedule's channel, refused with a reason when the channel is gone or the bot
may not post there, whose answers end with a footer saying which skill and schedule
made the post) and the scheduler's ``ScheduleEvents`` (a DM to the owner after
repeated failures; when the schedule is disabled, a DM and a line in the guild's
admin channel). Nothing it posts pings anyone.

With several processes, the scheduler's leader posts for every guild, also those whose
shard another process serves: their guild is not in this client's gateway cache. Then
the guild (its roles, and the bot's member for its permissions), the owner and the
channel are read over REST (:class:`_RestGuilds`; the guild is kept a minute), and the
post goes out over REST as always (the channel's webhook, or a message). A tool the
skill's owner must approve is asked there too, and the press (which Discord sends to the
process serving the guild) reaches the run through the database
(:mod:`adapters.discord.approval`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import discord

from adapters.discord.dm import DirectMessages
from adapters.discord.escalation import ClientSender
from adapters.discord.identity import caller_of
from adapters.discord.surface import DeliveryOptions, DiscordSurface
from adapters.discord.webhooks import Webhooks
from adapters.services.approval import ApprovalService
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

#: How long a guild read over REST (not served here) is reused.
REST_GUILD_TTL_S = 60.0


class _RestGuilds:
    """Guilds this process's shards do not serve, read over REST: the guild with its
    roles, and the bot's member in it, so that ``channel.permissions_for(guild.me)``
    and ``member.guild_permissions`` work as on a cached guild.

    Why the private ``_add_member``/``_add_channel``: discord.py offers no public way
    to give a guild it did not receive from the gateway its bot member; the guild is
    this helper's own object (never put in the client's cache), so nothing else sees it.
    """

    def __init__(
        self,
        client: discord.Client,
        *,
        ttl_s: float = REST_GUILD_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self._guilds: dict[int, tuple[float, discord.Guild]] = {}

    async def guild(self, guild_id: int) -> discord.Guild | None:
        """The guild, or None when the bot is not in it (any more)."""
        hit = self._guilds.get(guild_id)
        if hit is not None and self._monotonic() - hit[0] <= self.ttl_s:
            return hit[1]
        me = self.client.user
        if me is None:
            return None
        try:
            guild = await self.client.fetch_guild(guild_id, with_counts=False)
            member = await guild.fetch_member(me.id)
        except (discord.NotFound, discord.Forbidden):
            self._guilds.pop(guild_id, None)
            return None
        guild._add_member(member)
        if len(self._guilds) > 1_000:  # Why: bounded; a refill is two requests
            self._guilds.clear()
        self._guilds[guild_id] = (self._monotonic(), guild)
        return guild

    async def channel(self, guild: discord.Guild, channel_id: int) -> Any:
        """The guild's channel or thread (a thread with its parent, for permissions)."""
        channel: Any = guild.get_channel_or_thread(channel_id)
        if channel is not None:
            return channel
        channel = await guild.fetch_channel(channel_id)
        if isinstance(channel, discord.Thread) and channel.parent is None:
            parent = await guild.fetch_channel(channel.parent_id)
            if not isinstance(parent, discord.Thread):  # (a thread's parent never is)
                guild._add_channel(parent)
        return channel


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
        approvals: ApprovalService,
        limits: HistoryLimits | None = None,
        owner_ids: Collection[int] = (),
        options: DeliveryOptions | None = None,
    ) -> None:
        self.client = client
        self.webhooks = webhooks
        # Why the client's: the owner's press may reach another process (the one serving
        # the guild's shard); the question is in the database for it.
        self.approvals = approvals
        # Why a default: a scheduled post answers no message, so reads no history.
        self.limits = limits or HistoryLimits()
        self.guild_settings = guild_settings
        self.owner_ids = owner_ids
        self.options = options or DeliveryOptions()
        self._direct = DirectMessages(client)
        self._channels = ClientSender(client)
        self._rest = _RestGuilds(client)

    # --- SkillHost -------------------------------------------------------------------

    async def member(self, guild_id: str, user_id: str) -> Caller | None:
        # Why wait: a slot caught up at start fires before the guilds are cached.
        await self.client.wait_until_ready()
        guild = await self._guild(int(guild_id))
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
            guild = await self._guild(int(guild_id))
            if guild is None:
                raise HostUnavailable("coterie is no longer in that server")
            try:
                channel = await self._rest.channel(guild, int(channel_id))
            except (discord.NotFound, discord.Forbidden, discord.InvalidData) as exc:
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
            approvals=self.approvals,
            limits=self.limits,
            options=self.options,
        )
        surface.footer = footer
        return surface

    async def _guild(self, guild_id: int) -> discord.Guild | None:
        """From the gateway's cache when this process serves the guild's shard; else
        over REST (another process serves it)."""
        guild = self.client.get_guild(guild_id)
        if guild is not None:
            return guild
        return await self._rest.guild(guild_id)

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
