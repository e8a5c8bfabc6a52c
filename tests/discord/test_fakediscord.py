"""The fake's REST surface, through the real discord.py client: what cog tests rely on."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
import pytest
from discord.ext import commands

from bot.client import render_error
from executor.errors import ConfigError, RateLimited
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot


class Echo(commands.Cog):
    def __init__(self) -> None:
        self.seen: asyncio.Queue[discord.Message] = asyncio.Queue()

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        await self.seen.put(message)


@pytest.fixture
def bot_factory() -> BotFactory:
    async def make(fake: FakeDiscord) -> Any:
        bot = coterie_bot(fake)
        await bot.add_cog(Echo())
        return bot

    return make


async def test_message_reply_thread_webhook_history(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    fake = fake_discord
    sent = await fake.dispatch_message("<@bot> hi", author="alice", mentions=["bot"])
    cog: Echo = discord_bot.get_cog("Echo")
    msg = await asyncio.wait_for(cog.seen.get(), 5)
    assert msg.content == "<@bot> hi"
    assert discord_bot.user in msg.mentions
    assert isinstance(msg.author, discord.Member)

    async with msg.channel.typing():
        reply = await msg.reply("hello back", file=discord.File(__file__, filename="a.py"))
    assert reply.reference is not None and reply.reference.message_id == int(sent["id"])
    post = await fake.wait_for_call("POST", "/channels/{c}/messages")
    assert post.json["content"] == "hello back"
    assert post.files[0].filename == "a.py"
    assert fake.find_calls("POST", "/channels/{c}/typing")

    edited = await reply.edit(content="hello again")
    assert edited.content == "hello again"

    thread = await msg.create_thread(name="chat with persona")
    assert thread.id == msg.id
    assert discord_bot.get_channel(thread.id) is not None  # cached from THREAD_CREATE

    assert isinstance(msg.channel, discord.TextChannel)
    hook = await msg.channel.create_webhook(name="coterie personas")
    assert [w.id for w in await msg.channel.webhooks()] == [hook.id]
    as_persona = await hook.send(
        "I am Ada", username="Ada", wait=True, thread=thread, avatar_url="https://x.invalid/a.png"
    )
    assert as_persona.author.name == "Ada" and as_persona.channel.id == thread.id
    await hook.edit_message(as_persona.id, content="I am Ada, edited", thread=thread)
    assert fake.message(as_persona.id)["content"] == "I am Ada, edited"

    history = [m.content async for m in msg.channel.history(limit=10)]
    assert history == ["hello again", "<@bot> hi"]
    assert fake.unknown_calls == []


async def test_thread_messages_and_dms_reach_the_bot(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    fake = fake_discord
    cog: Echo = discord_bot.get_cog("Echo")
    th = fake.add_thread(fake.guild.channel_id("general"), "existing")
    await fake.dispatch("THREAD_CREATE", th)
    await fake.dispatch_message("in thread", channel_id=int(th["id"]))
    got = await asyncio.wait_for(cog.seen.get(), 5)
    assert isinstance(got.channel, discord.Thread)

    dm = fake.open_dm("alice")
    await fake.dispatch_message("in dm", channel_id=int(dm["id"]))
    got = await asyncio.wait_for(cog.seen.get(), 5)
    assert isinstance(got.channel, discord.DMChannel) and got.guild is None
    await got.channel.send("dm answer")
    assert fake.history(int(dm["id"]))[-1]["content"] == "dm answer"


async def test_components_and_modals(fake_discord: FakeDiscord, discord_bot: Any) -> None:
    fake = fake_discord
    clicked = asyncio.Event()
    submitted: asyncio.Queue[str] = asyncio.Queue()

    class Ask(discord.ui.Modal, title="Name"):
        name: discord.ui.TextInput[Ask] = discord.ui.TextInput(label="Name", custom_id="name")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            await submitted.put(self.name.value)
            await interaction.response.send_message("thanks", ephemeral=True)

    class Buttons(discord.ui.View):
        @discord.ui.button(label="Go", custom_id="go")
        async def go(
            self, interaction: discord.Interaction, button: discord.ui.Button[Any]
        ) -> None:
            clicked.set()
            await interaction.response.send_modal(Ask(custom_id="ask"))

    channel = discord_bot.get_channel(fake.guild.channel_id("general"))
    view = Buttons()
    message = await channel.send("press", view=view)
    inter = await fake.dispatch_component("go", message.id, user="alice")
    call = await fake.wait_for_interaction_response(inter)
    assert clicked.is_set() and call.json["type"] == 9
    assert call.json["data"]["custom_id"] == "ask"

    modal = await fake.dispatch_modal_submit("ask", {"name": "Ada"})
    assert await asyncio.wait_for(submitted.get(), 5) == "Ada"
    call = await fake.wait_for_interaction_response(modal)
    assert call.json["data"]["content"] == "thanks"
    view.stop()
    assert fake.unknown_calls == []


async def test_unknown_routes_are_recorded(fake_discord: FakeDiscord, discord_bot: Any) -> None:
    with pytest.raises(discord.NotFound):
        await discord_bot.http.request(discord.http.Route("GET", "/nowhere/{x}", x=1))
    [call] = fake_discord.unknown_calls
    assert (call.method, call.path, call.status) == ("GET", "/nowhere/1", 404)


def test_render_error_sentences() -> None:
    assert render_error(ConfigError("no model for tier x"))[0].startswith(
        "coterie is not configured for that (no model for tier x)"
    )
    assert render_error(RateLimited("slow"))[0].startswith("The AI providers are busy")
    text, ref = render_error(KeyError("internal"))
    assert ref is not None and f"(ref {ref})" in text and "internal" not in text


async def test_interaction_response_message_names_the_invoker(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    from discord import app_commands

    results: asyncio.Queue[discord.InteractionMessage] = asyncio.Queue()

    @app_commands.command(name="ping", description="Ping")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")
        await results.put(await interaction.original_response())

    discord_bot.tree.add_command(ping)
    await fake_discord.dispatch_slash("ping", user="bob")
    message = await asyncio.wait_for(results.get(), 5)
    assert message.content == "pong"
    assert message.interaction_metadata is not None
    assert message.interaction_metadata.user.id == int(fake_discord.users["bob"]["id"])
