"""Chat: ``/chat`` and the message listener. Thin: parse, build a request, call ``app.chat``.

The bot answers a mention, a reply to one of its messages, a DM (when
``settings.allow_dms``) and any message in a thread bound to a persona.
``/chat persona:<name> prompt:<text>`` answers in a new thread bound to that
persona, so the conversation continues there without mentions.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from adapters.chat import ChatRequest, ChatService
from adapters.conversation import reply_chain, starter_text, thread_history, turn_from_message
from adapters.delivery import Webhooks, no_pings, open_delivery
from adapters.identity import caller_from_interaction, caller_from_message

log = logging.getLogger("coterie.chat")

THREAD_NAME_MAX = 100


def thread_name(prompt: str) -> str:
    name = " ".join(prompt.split()) or "chat"
    return name if len(name) <= THREAD_NAME_MAX else name[: THREAD_NAME_MAX - 1] + "…"


class ChatCog(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.webhooks = Webhooks()
        # Test knobs: the throttle interval and the approval wait.
        self.edit_interval: float = 1.0
        self.approval_timeout: float = 120.0

    # --- helpers ---------------------------------------------------------------------

    @property
    def chat(self) -> ChatService | None:
        app = getattr(self.bot, "app", None)
        return getattr(app, "chat", None)

    @property
    def allow_dms(self) -> bool:
        settings = getattr(self.bot, "settings", None)
        return bool(getattr(settings, "allow_dms", True))

    def _owner_ids(self) -> frozenset[int]:
        return frozenset(getattr(self.bot, "owner_user_ids", frozenset()))

    def is_ours(self, message: discord.Message) -> bool:
        me = self.bot.user
        if me is not None and message.author.id == me.id:
            return True
        return message.webhook_id is not None and message.webhook_id in self.webhooks.ids

    async def _turns(self, message: discord.Message, chat: ChatService) -> list[Any]:
        limit = chat.limits.max_messages
        channel = message.channel
        if isinstance(channel, discord.Thread):
            history = await thread_history(channel, message, max_messages=limit)
        elif isinstance(channel, discord.DMChannel) and message.reference is None:
            history = [m async for m in channel.history(limit=limit + 1, before=message)]
            history.reverse()
            history.append(message)
        else:
            history = await reply_chain(message, max_messages=limit)
        bot_id = self.bot.user.id if self.bot.user else None
        return [
            await turn_from_message(m, is_ours=self.is_ours, bot_id=bot_id, limits=chat.limits)
            for m in history
        ]

    async def _addressed(self, message: discord.Message, chat: ChatService) -> bool:
        me = self.bot.user
        if me is None:
            return False
        if message.guild is None:
            return self.allow_dms
        if any(u.id == me.id for u in message.mentions):
            return True
        ref = message.reference
        if (
            ref is not None
            and isinstance(ref.resolved, discord.Message)
            and self.is_ours(ref.resolved)
        ):
            return True
        # Why last: the only check that reads the database (it runs for every thread message).
        return (
            isinstance(message.channel, discord.Thread)
            and await chat.threads.get(str(message.channel.id)) is not None
        )

    # --- messages --------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        # Why no try/except: a failure reaches CoterieBot.on_error, the one renderer
        # (a short reply with a log reference; the traceback goes to the log).
        chat = self.chat
        if chat is None or message.author.bot or message.webhook_id is not None:
            return
        if not await self._addressed(message, chat):
            return
        channel = message.channel
        thread = channel if isinstance(channel, discord.Thread) else None
        caller = caller_from_message(message, owner_ids=self._owner_ids())
        request = ChatRequest(
            caller=caller,
            turns=await self._turns(message, chat),
            trigger="chat",
            guild_id=str(message.guild.id) if message.guild else None,
            channel_id=str(thread.parent_id if thread else channel.id),
            thread_id=str(thread.id) if thread else None,
            shared=message.guild is not None,
        )
        choice = await chat.choose_persona(request)
        delivery = await open_delivery(
            channel,
            persona=choice.persona.name,
            avatar_url=choice.persona.avatar_url,
            requester_id=message.author.id,
            webhooks=self.webhooks if message.guild else None,
            reference=message,
            interval=self.edit_interval,
            approval_timeout=self.approval_timeout,
        )
        await chat.run(request, delivery, choice=choice)

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        """A deleted thread stops being bound to its persona."""
        chat = self.chat
        if chat is None:
            return
        if await chat.threads.unbind(str(payload.thread_id)):
            log.info("thread %s was deleted; its persona binding is gone", payload.thread_id)

    # --- /chat -----------------------------------------------------------------------

    @app_commands.command(name="chat", description="Ask a persona; the answer starts a thread")
    @app_commands.describe(
        prompt="What to ask", persona="Which persona answers (default: this channel's)"
    )
    async def chat_command(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, 4000],
        persona: str | None = None,
    ) -> None:
        # Acknowledge first: everything below may take longer than Discord's 3 s.
        await interaction.response.defer(ephemeral=True, thinking=True)
        chat = self.chat
        if chat is None:
            await interaction.followup.send("Chat is not available right now.", ephemeral=True)
            return
        from adapters.conversation import Turn

        caller = caller_from_interaction(interaction, owner_ids=self._owner_ids())
        channel = interaction.channel
        in_thread = isinstance(channel, discord.Thread)
        request = ChatRequest(
            caller=caller,
            turns=[Turn(author_name=interaction.user.display_name, content=prompt)],
            trigger="slash",
            guild_id=str(interaction.guild_id) if interaction.guild_id else None,
            channel_id=str(channel.parent_id if isinstance(channel, discord.Thread) else channel.id)
            if channel
            else None,
            thread_id=str(channel.id) if in_thread and channel else None,
            persona=persona,
            parse_prefix=False,
            shared=interaction.guild_id is not None,
        )
        choice = await chat.choose_persona(request)  # PersonaNotFound -> the renderer
        name = choice.persona.name
        if not isinstance(channel, discord.abc.Messageable):
            await interaction.followup.send("I can't answer in this channel.", ephemeral=True)
            return
        starter = await channel.send(
            starter_text(interaction.user.display_name, name, prompt), allowed_mentions=no_pings()
        )
        target: discord.abc.Messageable = channel
        reference: discord.Message | None = starter
        if isinstance(channel, discord.TextChannel):
            try:
                thread = await starter.create_thread(name=thread_name(prompt))
            except discord.HTTPException:
                log.info("cannot create a thread in #%s; answering in the channel", channel)
            else:
                await chat.threads.bind(
                    thread_id=str(thread.id),
                    guild_id=str(channel.guild.id),
                    channel_id=str(channel.id),
                    persona=name,
                    created_by=caller.user_id,
                )
                request.thread_id = str(thread.id)
                target, reference = thread, None
        where = target.mention if isinstance(target, discord.Thread) else "below"
        await interaction.followup.send(f"**{name}** is answering {where}.", ephemeral=True)
        delivery = await open_delivery(
            target,
            persona=name,
            avatar_url=choice.persona.avatar_url,
            requester_id=interaction.user.id,
            webhooks=self.webhooks if interaction.guild_id else None,
            reference=reference,
            interval=self.edit_interval,
            approval_timeout=self.approval_timeout,
        )
        await chat.run(request, delivery, choice=choice)

    @chat_command.autocomplete("persona")
    async def persona_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        app = getattr(self.bot, "app", None)
        store = getattr(app, "personas", None)
        if store is None or not hasattr(store, "search"):
            return []
        gid = str(interaction.guild_id) if interaction.guild_id else None
        found = await store.search(gid, current)
        return [app_commands.Choice(name=p.name, value=p.name) for p in found[:25]]


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ChatCog(bot))
