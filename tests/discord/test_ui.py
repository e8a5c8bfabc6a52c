"""The shared cog UI end to end: the real discord.py client, a test-only cog, the fake
Discord. Pages move and stop at the ends, only the asker may press, timeouts disable
the buttons; confirm answers True only on Confirm; charts carry alt text."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from adapters.discord.ui import (
    NOT_YOURS,
    PAGINATOR_TIMEOUT,
    Paginator,
    confirm,
    embed_pages,
    png_file,
    send_paginated,
)
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot
from tests.fakediscord.server import Call, FakeInteraction

EPHEMERAL = 64
MESSAGE, DEFERRED_UPDATE, UPDATE = 4, 6, 7
DANGER = 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


class UICog(commands.Cog):
    """Test-only commands that render with the shared UI and report what they got."""

    def __init__(self) -> None:
        self.paginators: asyncio.Queue[Paginator] = asyncio.Queue()
        self.answers: asyncio.Queue[bool] = asyncio.Queue()
        self.fetched: list[int] = []

    @app_commands.command(name="pages")
    async def pages(
        self, interaction: discord.Interaction[Any], count: int = 3, private: bool = False
    ) -> None:
        """Pages of embeds."""
        embeds = [discord.Embed(title=f"Entry {i + 1}") for i in range(count)]
        await self.paginators.put(await send_paginated(interaction, embeds, ephemeral=private))

    @app_commands.command(name="lazy")
    async def lazy(self, interaction: discord.Interaction[Any]) -> None:
        """Pages fetched one at a time, count unknown (like the audit list by cursor)."""
        await interaction.response.defer(ephemeral=True)

        async def source(index: int) -> discord.Embed | None:
            self.fetched.append(index)
            return discord.Embed(title=f"Run {index + 1}") if index < 3 else None

        await self.paginators.put(await send_paginated(interaction, source, ephemeral=True))

    @app_commands.command(name="ask")
    async def ask(self, interaction: discord.Interaction[Any], wait: float = 120.0) -> None:
        """Asks for confirmation."""
        await self.answers.put(
            await confirm(interaction, "Delete it all?", danger=True, timeout=wait)
        )


@pytest.fixture
def cog() -> UICog:
    return UICog()


@pytest.fixture
def bot_factory(cog: UICog) -> BotFactory:
    async def make(fake: FakeDiscord) -> Any:
        bot = coterie_bot(fake)
        await bot.add_cog(cog)
        return bot

    return make


@pytest.fixture(autouse=True)
def _no_view_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A view callback that raised is only logged by discord.py: fail the test on it."""
    yield
    # Why get_records: in teardown, caplog.records holds only the teardown's records.
    records = [*caplog.get_records("call"), *caplog.records]
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


# --- helpers ---------------------------------------------------------------------------


def buttons(components: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {b["label"]: b for row in components for b in row["components"]}


def footer(data: dict[str, Any]) -> str:
    text: str = data["embeds"][0]["footer"]["text"]
    return text


async def slash(
    fake: FakeDiscord, name: str, options: dict[str, Any] | None = None, **kw: Any
) -> tuple[FakeInteraction, Call]:
    inter = await fake.dispatch_slash(name, options or {}, **kw)
    return inter, await fake.wait_for_interaction_response(inter)


async def click(
    fake: FakeDiscord, message: dict[str, Any], label: str, *, user: str = "alice"
) -> tuple[FakeInteraction, Call]:
    button = buttons(message["components"])[label]
    inter = await fake.dispatch_component(button["custom_id"], int(message["id"]), user=user)
    return inter, await fake.wait_for_interaction_response(inter)


def sent_message(call: Call) -> dict[str, Any]:
    assert call.json["type"] == MESSAGE, call.json
    message: dict[str, Any] = call.response["resource"]["message"]
    return message


# --- the paginator ---------------------------------------------------------------------


async def test_next_walks_the_pages_and_stops_at_the_last(
    fake_discord: FakeDiscord, discord_bot: Any, cog: UICog
) -> None:
    fake = fake_discord
    _, call = await slash(fake, "pages")
    first = call.json["data"]
    assert first["embeds"][0]["title"] == "Entry 1" and footer(first) == "Page 1/3"
    assert not int(first.get("flags") or 0) & EPHEMERAL
    row = buttons(first["components"])
    assert row["Previous"]["disabled"] and not row["Next"].get("disabled")
    message = sent_message(call)

    _, moved = await click(fake, message, "Next")
    assert moved.json["type"] == UPDATE
    assert moved.json["data"]["embeds"][0]["title"] == "Entry 2"
    assert footer(moved.json["data"]) == "Page 2/3"
    row = buttons(moved.json["data"]["components"])
    assert not row["Previous"].get("disabled") and not row["Next"].get("disabled")

    _, moved = await click(fake, fake.find_message(int(message["id"])) or {}, "Next")
    assert moved.json["data"]["embeds"][0]["title"] == "Entry 3"
    assert footer(moved.json["data"]) == "Page 3/3"
    assert buttons(moved.json["data"]["components"])["Next"]["disabled"]
    # The message itself now shows the last page.
    stored = fake.find_message(int(message["id"]))
    assert stored is not None and footer(stored) == "Page 3/3"

    _, back = await click(fake, stored, "Previous")
    assert footer(back.json["data"]) == "Page 2/3"
    view = await cog.paginators.get()
    assert view.index == 1
    assert fake.unknown_calls == []


async def test_someone_else_is_refused_privately_and_the_page_stays(
    fake_discord: FakeDiscord, discord_bot: Any, cog: UICog
) -> None:
    fake = fake_discord
    _, call = await slash(fake, "pages")
    message = sent_message(call)
    _, refused = await click(fake, message, "Next", user="bob")
    assert refused.json["type"] == MESSAGE
    assert refused.json["data"]["flags"] & EPHEMERAL
    assert refused.json["data"]["content"] == NOT_YOURS
    view = await cog.paginators.get()
    assert view.index == 0
    stored = fake.find_message(int(message["id"]))
    assert stored is not None and footer(stored) == "Page 1/3"
    # Alice's click still works afterwards.
    _, moved = await click(fake, stored, "Next")
    assert footer(moved.json["data"]) == "Page 2/3"


async def test_buttons_live_ten_minutes_and_timeout_disables_them(
    fake_discord: FakeDiscord, discord_bot: Any, cog: UICog
) -> None:
    fake = fake_discord
    inter, call = await slash(fake, "pages", {"private": True})
    assert call.json["data"]["flags"] & EPHEMERAL
    view = await cog.paginators.get()
    assert view.timeout is not None and view.timeout >= 600
    assert view.timeout == PAGINATOR_TIMEOUT

    # No click yet: the message is edited through the command's own interaction.
    since = len(fake.calls)
    await view.on_timeout()
    edit = await fake.wait_for_call(
        "PATCH", rf"/webhooks/{fake.application_id}/{inter.token}/messages/@original", since=since
    )
    assert all(b["disabled"] for b in buttons(edit.json["components"]).values())
    assert fake.unknown_calls == []


async def test_timeout_after_a_click_edits_through_the_click(
    fake_discord: FakeDiscord, discord_bot: Any, cog: UICog
) -> None:
    fake = fake_discord
    _, call = await slash(fake, "pages", {"private": True})
    message = sent_message(call)
    pressed, _ = await click(fake, message, "Next")
    view = await cog.paginators.get()
    since = len(fake.calls)
    await view.on_timeout()
    edit = await fake.wait_for_call(
        "PATCH",
        rf"/webhooks/{fake.application_id}/{pressed.token}/messages/@original",
        since=since,
    )
    assert all(b["disabled"] for b in buttons(edit.json["components"]).values())
    stored = fake.find_message(int(message["id"]))
    assert stored is not None and footer(stored) == "Page 2/3"
    assert all(b["disabled"] for b in buttons(stored["components"]).values())


async def test_a_paginator_sent_to_a_channel_times_out_quietly_when_its_message_is_gone(
    fake_discord: FakeDiscord, discord_bot: Any
) -> None:
    fake = fake_discord
    general = fake.guild.channel_id("general")
    channel = discord_bot.get_channel(general)
    view = Paginator([discord.Embed(title="a"), discord.Embed(title="b")], author_id=1)
    first = await view.show(0)
    assert first is not None
    view.message = await channel.send(embed=first, view=view)
    fake.history(general).clear()  # someone deleted the message
    since = len(fake.calls)
    await view.on_timeout()  # the 404 is logged at INFO, not raised
    (edit,) = fake.find_calls("PATCH", rf"/channels/{general}/messages/{{m}}", since=since)
    assert edit.status == 404
    assert view.previous_button.disabled and view.next_button.disabled


async def test_one_page_has_no_buttons_and_none_says_so(
    fake_discord: FakeDiscord, discord_bot: Any, cog: UICog
) -> None:
    fake = fake_discord
    _, call = await slash(fake, "pages", {"count": 1})
    data = call.json["data"]
    assert footer(data) == "Page 1/1" and not data.get("components")
    assert (await cog.paginators.get()).is_finished()
    _, call = await slash(fake, "pages", {"count": 0})
    assert call.json["data"]["content"] == "Nothing to show."


async def test_a_lazy_source_is_read_in_order_and_learns_its_end(
    fake_discord: FakeDiscord, discord_bot: Any, cog: UICog
) -> None:
    fake = fake_discord
    inter = await fake.dispatch_slash("lazy")
    first = await fake.wait_for_call(
        "POST", rf"/webhooks/{fake.application_id}/{inter.token}", since=0
    )
    assert first.json["flags"] & EPHEMERAL
    assert first.json["embeds"][0]["title"] == "Run 1" and footer(first.json) == "Page 1"
    assert not buttons(first.json["components"])["Next"].get("disabled")
    message: dict[str, Any] = first.response

    pressed, ack = await click(fake, message, "Next")
    # Page 3 is not fetched yet: the click is acknowledged first, then the page shown.
    assert ack.json["type"] == DEFERRED_UPDATE
    edit = await fake.wait_for_call(
        "PATCH", rf"/webhooks/{fake.application_id}/{pressed.token}/messages/@original"
    )
    assert edit.json["embeds"][0]["title"] == "Run 2" and footer(edit.json) == "Page 2"

    stored = fake.find_message(int(message["id"])) or {}
    pressed, _ = await click(fake, stored, "Next")
    edit = await fake.wait_for_call(
        "PATCH", rf"/webhooks/{fake.application_id}/{pressed.token}/messages/@original"
    )
    assert footer(edit.json) == "Page 3/3"
    assert buttons(edit.json["components"])["Next"]["disabled"]
    # Each index once, in order; one past the end told the paginator where it stops.
    assert cog.fetched == [0, 1, 2, 3]

    _, back = await click(fake, fake.find_message(int(message["id"])) or {}, "Previous")
    assert back.json["type"] == UPDATE and footer(back.json["data"]) == "Page 2/3"
    assert cog.fetched == [0, 1, 2, 3]
    assert fake.unknown_calls == []


# --- confirm ---------------------------------------------------------------------------


async def test_confirm_is_true_on_confirm(
    fake_discord: FakeDiscord, discord_bot: Any, cog: UICog
) -> None:
    fake = fake_discord
    _, call = await slash(fake, "ask")
    data = call.json["data"]
    assert data["flags"] & EPHEMERAL and data["content"] == "Delete it all?"
    row = buttons(data["components"])
    assert list(row) == ["Confirm", "Cancel"] and row["Confirm"]["style"] == DANGER
    _, chosen = await click(fake, sent_message(call), "Confirm")
    assert chosen.json["type"] == UPDATE
    assert all(b["disabled"] for b in buttons(chosen.json["data"]["components"]).values())
    assert await asyncio.wait_for(cog.answers.get(), 5) is True


async def test_confirm_is_false_on_cancel_and_refuses_someone_else(
    fake_discord: FakeDiscord, discord_bot: Any, cog: UICog
) -> None:
    fake = fake_discord
    _, call = await slash(fake, "ask")
    message = sent_message(call)
    _, refused = await click(fake, message, "Confirm", user="bob")
    assert refused.json["type"] == MESSAGE and refused.json["data"]["flags"] & EPHEMERAL
    assert refused.json["data"]["content"] == NOT_YOURS
    assert cog.answers.empty()
    # Had Bob's Confirm counted, the answer would be True.
    _, chosen = await click(fake, message, "Cancel")
    assert chosen.json["type"] == UPDATE
    assert await asyncio.wait_for(cog.answers.get(), 5) is False


async def test_confirm_is_false_when_nobody_answers(
    fake_discord: FakeDiscord, discord_bot: Any, cog: UICog
) -> None:
    fake = fake_discord
    inter, _ = await slash(fake, "ask", {"wait": 0.05})
    assert await asyncio.wait_for(cog.answers.get(), 5) is False
    edit = await fake.wait_for_call(
        "PATCH", rf"/webhooks/{fake.application_id}/{inter.token}/messages/@original"
    )
    assert all(b["disabled"] for b in buttons(edit.json["components"]).values())


# --- files and text --------------------------------------------------------------------


def test_png_file_carries_alt_text() -> None:
    file = png_file(PNG, "spend", description="Spend per day, last 30 days")
    assert file.filename == "spend.png"
    assert file.description == "Spend per day, last 30 days"
    assert file.to_dict(0)["description"] == "Spend per day, last 30 days"
    assert file.fp.read() == PNG
    assert png_file(PNG, "a.PNG", description="x" * 2000).description == "x" * 1024
    with pytest.raises(ValueError, match="not a PNG"):
        png_file(b"GIF89a", "chart.png", description="a chart")


def test_embed_pages_cut_long_text_within_the_embed_limit() -> None:
    text = "\n\n".join(f"paragraph {i} " + "word " * 200 for i in range(12))
    pages = embed_pages(text, title="Prompt")
    assert len(pages) > 1
    assert all(p.title == "Prompt" and len(p.description or "") <= 4096 for p in pages)
    assert embed_pages("") == []
