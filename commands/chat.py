"""Chat: ``/chat`` and the message listener. Thin: read the event, call the chat flow.

The chat flow (:class:`adapters.services.chat.ChatService`) decides whether to
answer (a mention, a reply to one of coterie's messages, a DM when allowed, any
message in a thread bound to a persona), which history to read and which persona
answers; this cog turns the Discord event into its facts and a
:class:`~adapters.discord.surface.DiscordSurface` to speak through.
``/chat persona:<name> prompt:<text>`` answers in a new thread bound to that
persona, so the conversation continues there without mentions.
"""

from __future__ import annotations

import logging
from typing import Protocol

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord.client import CoterieClient
from adapters.discord.identity import caller_from_interaction
from adapters.discord.options import persona_autocomplete
from adapters.discord.surface import DeliveryOptions, DiscordSurface, category_of, incoming
from adapters.services.chat import ChatRequest, ChatService
from adapters.services.conversation import Turn
from personas.model import Persona

__all__ = ["ChatApp", "ChatCog", "setup"]

log = logging.getLogger("coterie.chat")


class ChatApp(Protocol):
    """What this cog needs of the app."""

    @property
    def chat(self) -> ChatService: ...


Interaction = discord.Interaction[CoterieClient[ChatApp]]


class ChatCog(commands.Cog):
    def __init__(self, bot: CoterieClient[ChatApp]) -> None:
        self.bot = bot
        # Test knobs: the throttle interval and the approval wait.
        self.delivery_options = DeliveryOptions()

    def _surface(
        self,
        target: discord.abc.Messageable,
        *,
        requester: discord.abc.User,
        guild: bool,
        message: discord.Message | None = None,
    ) -> DiscordSurface:
        me = self.bot.user
        return DiscordSurface(
            target,
            requester_id=requester.id,
            bot_user_id=me.id if me else None,
            webhooks=self.bot.webhooks,
            approvals=self.bot.approvals,
            limits=self.bot.app.chat.limits,
            message=message,
            options=self.delivery_options,
            use_webhooks=guild,
            client=self.bot,
            texts=self.bot.attachment_texts,
        )

    # --- messages --------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        # Why no try/except: a failure reaches CoterieBot.on_error, the one renderer
        # (a short reply with a log reference; the traceback goes to the log).
        me = self.bot.user
        if me is None or message.author.bot or message.webhook_id is not None:
            return
        facts = incoming(
            message,
            bot_user_id=me.id,
            webhooks=self.bot.webhooks,
            owner_ids=self.bot.owner_user_ids,
        )
        surface = self._surface(
            message.channel,
            requester=message.author,
            guild=message.guild is not None,
            message=message,
        )
        await self.bot.app.chat.answer(facts, surface)

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        """A deleted thread stops being bound to its persona."""
        if await self.bot.app.chat.threads.unbind(str(payload.thread_id)):
            log.info("thread %s was deleted; its persona binding is gone", payload.thread_id)

    # --- /chat -----------------------------------------------------------------------

    @app_commands.command(name="chat", description="Ask a persona; the answer starts a thread")
    @app_commands.describe(
        prompt="What to ask", persona="Which persona answers (default: this channel's)"
    )
    @app_commands.autocomplete(persona=persona_autocomplete)
    async def chat_command(
        self,
        interaction: Interaction,
        prompt: app_commands.Range[str, 1, 4000],
        persona: str | None = None,
    ) -> None:
        # Acknowledge first: everything below may take longer than Discord's 3 s.
        await interaction.response.defer(ephemeral=True, thinking=True)
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            await interaction.followup.send("I can't answer in this channel.", ephemeral=True)
            return
        thread = channel if isinstance(channel, discord.Thread) else None
        request = ChatRequest(
            caller=caller_from_interaction(interaction, owner_ids=self.bot.owner_user_ids),
            turns=[Turn(author_name=interaction.user.display_name, content=prompt)],
            trigger="slash",
            guild_id=str(interaction.guild_id) if interaction.guild_id else None,
            channel_id=str(thread.parent_id if thread else getattr(channel, "id", "")),
            thread_id=str(thread.id) if thread else None,
            category_id=category_of(channel),
            persona=persona,
            parse_prefix=False,
            shared=interaction.guild_id is not None,
        )

        async def announce(chosen: Persona, thread_id: str | None) -> None:
            where = f"<#{thread_id}>" if thread_id else "below"
            await interaction.followup.send(
                f"**{chosen.name}** is answering {where}.", ephemeral=True
            )

        surface = self._surface(
            channel, requester=interaction.user, guild=interaction.guild_id is not None
        )
        # PersonaNotFound (an unknown persona:) reaches the renderer before anything is posted.
        await self.bot.app.chat.start_thread(request, surface, announce=announce)


async def setup(bot: CoterieClient[ChatApp]) -> None:
    await bot.add_cog(ChatCog(bot))
