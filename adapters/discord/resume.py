"""Resume or Discard an interrupted run, on Discord.

:class:`DiscordResumeHost` posts the offer (:class:`adapters.services.resume.ResumeHost`):
in the thread or channel where the run was answering (a DM for a DM), mentioning its
member only, with two buttons. The buttons are :class:`OfferButton`, a ``DynamicItem``:
their ``custom_id`` carries the run id, so they work in any process and after any
number of restarts until the offer expires. Who may press, whether the offer is still
open and what it leads to are decided by the service, on the server side, from the
database: anyone else is told privately that it is not theirs.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

import discord

from adapters.discord.approval import close_question
from adapters.discord.client import CoterieClient
from adapters.discord.identity import caller_from_interaction
from adapters.discord.surface import DeliveryOptions, DiscordSurface
from adapters.services.chat import ChatService
from adapters.services.errors import NotYourOffer, OfferUnavailable, Refusal
from adapters.services.resume import Offer, ResumeService
from personas.errors import PersonaNotFound

__all__ = ["DiscordResumeHost", "OfferButton", "ResumeApp", "offer_text", "offer_view"]

log = logging.getLogger(__name__)

_NO_PINGS = discord.AllowedMentions.none()
_PROMPT_CHARS = 300


class ResumeApp(Protocol):
    """What the buttons need of the app."""

    @property
    def resume(self) -> ResumeService: ...

    @property
    def chat(self) -> ChatService: ...


def offer_text(offer: Offer) -> str:
    prompt = " ".join(offer.prompt.split())
    if len(prompt) > _PROMPT_CHARS:
        prompt = prompt[: _PROMPT_CHARS - 1] + "…"
    who = f" (**{offer.persona}**)" if offer.persona else ""
    done = f" after {offer.steps} step(s)" if offer.steps else ""
    quote = f"\n> {prompt}" if prompt else ""
    expires = int(offer.expires_at.timestamp())
    return (
        f"<@{offer.user_id}> a restart interrupted my answer{who}{done} to:{quote}\n"
        f"Resume it from where it stopped, or discard it?\n-# The buttons expire <t:{expires}:R>."
    )


_TEMPLATE = r"coterie:offer:(?P<action>resume|discard):(?P<run_id>[0-9A-Za-z_-]{1,64})"


class OfferButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=_TEMPLATE):
    """Resume or Discard one run's offer; only its member's press counts."""

    def __init__(self, action: str, run_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Resume" if action == "resume" else "Discard",
                style=discord.ButtonStyle.primary
                if action == "resume"
                else discord.ButtonStyle.secondary,
                custom_id=f"coterie:offer:{action}:{run_id}",
            )
        )
        self.action = action
        self.run_id = run_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> OfferButton:
        return cls(match["action"], match["run_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        client: CoterieClient[ResumeApp] = interaction.client
        service = client.app.resume
        content = interaction.message.content if interaction.message is not None else ""
        try:
            if self.action == "discard":
                await service.discard(self.run_id, str(interaction.user.id))
                await interaction.response.edit_message(
                    content=f"{content}\n-# Discarded."[:2000],
                    view=None,
                    allowed_mentions=_NO_PINGS,
                )
                return

            async def claimed() -> None:
                await interaction.response.edit_message(
                    content=f"{content}\n-# Resumed."[:2000], view=None, allowed_mentions=_NO_PINGS
                )

            await service.resume(
                self.run_id,
                caller_from_interaction(interaction),
                _surface(interaction, client),
                on_claimed=claimed,
            )
        except (Refusal, PersonaNotFound) as exc:
            await _refuse(interaction, exc, content)


async def _refuse(interaction: discord.Interaction[Any], exc: Exception, content: str) -> None:
    """Tell the presser privately why not; an offer nobody can press any more loses
    its buttons."""
    closed = isinstance(exc, OfferUnavailable) and not isinstance(exc, NotYourOffer)
    if interaction.response.is_done():
        await interaction.followup.send(str(exc), ephemeral=True, allowed_mentions=_NO_PINGS)
        return
    if closed:
        await interaction.response.edit_message(view=None)
        await interaction.followup.send(str(exc), ephemeral=True, allowed_mentions=_NO_PINGS)
        return
    await interaction.response.send_message(str(exc), ephemeral=True, allowed_mentions=_NO_PINGS)


def _surface(
    interaction: discord.Interaction[Any], client: CoterieClient[ResumeApp]
) -> DiscordSurface:
    channel = interaction.channel
    if not isinstance(channel, discord.abc.Messageable):
        raise OfferUnavailable("I can't answer in this channel any more.")
    me = client.user
    return DiscordSurface(
        channel,
        requester_id=interaction.user.id,
        bot_user_id=me.id if me else None,
        webhooks=client.webhooks,
        approvals=client.approvals,
        limits=client.app.chat.limits,
        options=DeliveryOptions(),
        use_webhooks=interaction.guild_id is not None,
        client=client,
    )


def offer_view(run_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(OfferButton("resume", run_id))
    view.add_item(OfferButton("discard", run_id))
    return view


class DiscordResumeHost:
    """Posts offers where the interrupted run was answering."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client

    async def post_offer(self, offer: Offer) -> tuple[str, str] | None:
        await self.client.wait_until_ready()
        target = await self._target(offer)
        if target is None:
            return None
        message = await target.send(
            offer_text(offer),
            view=offer_view(offer.run_id),
            allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, users=[discord.Object(id=int(offer.user_id))]
            ),
        )
        return str(message.channel.id), str(message.id)

    async def close_offer(self, channel_id: str, message_id: str, note: str) -> None:
        channel: Any = self.client.get_channel(int(channel_id))
        if channel is None:
            channel = await self.client.fetch_channel(int(channel_id))
        message = await channel.fetch_message(int(message_id))
        await message.edit(
            content=f"{message.content}\n-# {note}"[:2000], view=None, allowed_mentions=_NO_PINGS
        )

    async def close_question(
        self, channel_id: str, message_id: str, approval_id: str, note: str
    ) -> None:
        await close_question(self.client, channel_id, message_id, approval_id, note)

    async def _target(self, offer: Offer) -> discord.abc.Messageable | None:
        if offer.guild_id is None or offer.channel_id is None:
            try:
                uid = int(offer.user_id)
                user = self.client.get_user(uid) or await self.client.fetch_user(uid)
                return await user.create_dm()
            except discord.HTTPException:
                return None
        channel: Any = self.client.get_channel(int(offer.channel_id))
        if channel is None:
            try:
                channel = await self.client.fetch_channel(int(offer.channel_id))
            except discord.HTTPException:
                return None
        return channel if isinstance(channel, discord.abc.Messageable) else None
