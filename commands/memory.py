"""/memory: what personas remember about you, in your hands; and the server's lore.

A member's commands read and change only their own notes (every store call names
them), and answer privately: ``list`` (paginated), ``show``, ``forget``, ``forget-all``
(with a confirm button), ``off`` / ``on`` (their own switch), ``export`` (a JSON file).
Admins (Manage Server, checked on the server side, autocompletes included) write the
server's lore for a persona (``lore add|list|remove``) and see how many notes personas
keep about each member (``members``), never what the notes say.

Thin: each callback parses, checks, calls :class:`adapters.services.memory.MemoryService`
and renders; errors go to the bot's one renderer.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord.client import CoterieClient
from adapters.discord.identity import caller_from_interaction, require_privilege
from adapters.discord.options import (
    MAX_CHOICES,
    PersonaArg,
    PersonaSearch,
    choice_label,
    persona_autocomplete,
)
from adapters.discord.ui import confirm, send_paginated
from executor.agent import Privilege
from memory.notes import Note

if TYPE_CHECKING:
    from adapters.services.memory import MemoryService

__all__ = ["MemoryApp", "MemoryCog", "NoteTransformer", "setup"]

log = logging.getLogger("coterie.commands.memory")

COLOUR = discord.Colour.teal()
PAGE = 10
_NO_PINGS = discord.AllowedMentions.none()


class MemoryApp(Protocol):
    """What this cog needs of the app."""

    @property
    def memory(self) -> MemoryService: ...
    @property
    def personas(self) -> PersonaSearch: ...


Interaction = discord.Interaction[CoterieClient[MemoryApp]]


def _service(interaction: Interaction) -> MemoryService:
    return interaction.client.app.memory


def _me(interaction: Interaction) -> str:
    return str(interaction.user.id)


def _guild(interaction: Interaction) -> str:
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()
    return str(interaction.guild_id)


def _persona_name(value: str | None) -> str | None:
    name = (value or "").strip().lower()
    return name or None


def place_label(place: str, guild_id: int | None) -> str:
    if place == "dm":
        return "DMs"
    if guild_id is not None and place == f"guild:{guild_id}":
        return "this server"
    return "another server"


def _when(at: datetime) -> str:
    return discord.utils.format_dt(at, "d")


def _excerpt(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- a note, named in an option ---------------------------------------------------


class NoteTransformer(app_commands.Transformer[CoterieClient[MemoryApp]]):
    """A note's number -> the member's :class:`Note` (``NoteNotFound`` when it is not
    theirs); the autocomplete offers the member's own notes, never anyone else's."""

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.integer

    async def transform(self, interaction: Interaction, value: Any) -> Note:
        return await _service(interaction).note(_me(interaction), int(value))

    async def autocomplete(  # type: ignore[override]
        self, interaction: Interaction, value: int | float | str
    ) -> list[app_commands.Choice[int]]:
        typed = str(value).strip().lstrip("#").lower()
        notes = await _service(interaction).notes(_me(interaction), limit=200)
        found = [n for n in notes if not typed or typed in str(n.id) or typed in n.text.lower()]
        return [
            app_commands.Choice(name=choice_label(f"#{n.id} {n.persona}", n.text), value=n.id)
            for n in found[:MAX_CHOICES]
        ]


NoteArg = app_commands.Transform[Note, NoteTransformer]


class LoreTransformer(app_commands.Transformer[CoterieClient[MemoryApp]]):
    """A lore entry's number in this server (the autocomplete offers this server's)."""

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.integer

    async def transform(self, interaction: Interaction, value: Any) -> int:
        return int(value)

    async def autocomplete(  # type: ignore[override]
        self, interaction: Interaction, value: int | float | str
    ) -> list[app_commands.Choice[int]]:
        if interaction.guild_id is None:
            return []
        typed = str(value).strip().lstrip("#").lower()
        entries = await _service(interaction).lore(str(interaction.guild_id))
        found = [n for n in entries if not typed or typed in str(n.id) or typed in n.text.lower()]
        return [
            app_commands.Choice(name=choice_label(f"#{n.id} {n.persona}", n.text), value=n.id)
            for n in found[:MAX_CHOICES]
        ]


LoreArg = app_commands.Transform[int, LoreTransformer]


# --- rendering --------------------------------------------------------------------


def note_line(note: Note, guild_id: int | None) -> str:
    return (
        f"**#{note.id}** {_excerpt(note.text, 300)}\n"
        f"-# {note.persona} · {place_label(note.place, guild_id)} · {_when(note.created_at)}"
    )


def note_embed(note: Note, guild_id: int | None) -> discord.Embed:
    embed = discord.Embed(title=f"Note #{note.id}", description=note.text, colour=COLOUR)
    embed.add_field(name="Kept by", value=note.persona)
    embed.add_field(name="Where", value=place_label(note.place, guild_id))
    embed.add_field(name="Saved", value=_when(note.created_at))
    if note.run_id:
        embed.add_field(name="Run", value=f"`{note.run_id}`", inline=False)
    embed.set_footer(text=f"/memory forget {note.id} deletes it")
    return embed


class MemoryCog(
    commands.GroupCog,
    group_name="memory",
    group_description="What personas remember about you",
):
    def __init__(self, bot: CoterieClient[MemoryApp]) -> None:
        self.bot = bot
        super().__init__()

    lore = app_commands.Group(
        name="lore", description="What personas know about this server (admins)", guild_only=True
    )

    # --- the member's own ------------------------------------------------------------

    @app_commands.command(name="list", description="The notes personas keep about you")
    @app_commands.describe(persona="Only the notes of this persona")
    @app_commands.autocomplete(persona=persona_autocomplete)
    async def list_(self, interaction: Interaction, persona: str | None = None) -> None:
        memory = _service(interaction)
        me, name = _me(interaction), _persona_name(persona)
        total = await memory.count(me, persona=name)
        pages = max(1, -(-total // PAGE))
        off = await memory.is_off(me)
        title = f"What {name or 'personas'} remember{'s' if name else ''} about you"

        async def page(index: int) -> discord.Embed | None:
            if index >= pages or total == 0:
                return None
            notes = await memory.notes(me, persona=name, limit=PAGE, offset=index * PAGE)
            embed = discord.Embed(
                title=title,
                description="\n".join(note_line(n, interaction.guild_id) for n in notes),
                colour=COLOUR,
            )
            embed.set_footer(
                text=f"{total} note(s)"
                + (" · memory is off for you (/memory on)" if off else "")
                + " · /memory forget <number> · /memory export"
            )
            return embed

        empty = "No persona remembers anything about you" + (f" ({name})." if name else ".")
        if off:
            empty += " Memory is off for you: /memory on turns it back on."
        await send_paginated(interaction, page, page_count=pages, ephemeral=True, empty=empty)

    @app_commands.command(name="show", description="One of your notes, in full")
    @app_commands.describe(note="The note's number")
    async def show(self, interaction: Interaction, note: NoteArg) -> None:
        await interaction.response.send_message(
            embed=note_embed(note, interaction.guild_id), ephemeral=True
        )

    @app_commands.command(name="forget", description="Delete one of your notes")
    @app_commands.describe(note="The note's number")
    async def forget(self, interaction: Interaction, note: NoteArg) -> None:
        gone = await _service(interaction).forget(_me(interaction), note.id)
        await interaction.response.send_message(
            f"Forgot note #{gone.id}: {_excerpt(gone.text, 1800)}",
            ephemeral=True,
            allowed_mentions=_NO_PINGS,
        )

    @app_commands.command(name="forget-all", description="Delete all your notes (or one persona's)")
    @app_commands.describe(persona="Only the notes of this persona")
    @app_commands.autocomplete(persona=persona_autocomplete)
    async def forget_all(self, interaction: Interaction, persona: str | None = None) -> None:
        memory = _service(interaction)
        me, name = _me(interaction), _persona_name(persona)
        count = await memory.count(me, persona=name)
        if count == 0:
            await interaction.response.send_message(
                "There is nothing to forget: no persona keeps a note about you"
                + (f" ({name})." if name else "."),
                ephemeral=True,
            )
            return
        whose = f"{name}'s" if name else "every persona's"
        prompt = (
            f"Delete {whose} {count} note(s) about you, in every server and in DMs? "
            "**This cannot be undone.**"
        )
        if not await confirm(interaction, prompt, confirm_label="Delete them", danger=True):
            await interaction.followup.send("Nothing was deleted.", ephemeral=True)
            return
        gone = await memory.forget_all(me, persona=name)
        await interaction.followup.send(f"Done: {gone} note(s) forgotten.", ephemeral=True)

    @app_commands.command(
        name="off", description="Personas stop reading and keeping notes about you"
    )
    async def off(self, interaction: Interaction) -> None:
        await _service(interaction).set_off(_me(interaction), True)
        await interaction.response.send_message(
            "Memory is off for you: no persona reads or keeps notes about you, anywhere. "
            "Your notes are kept until you delete them (/memory forget-all); "
            "/memory on turns it back on.",
            ephemeral=True,
        )

    @app_commands.command(name="on", description="Personas may remember you again")
    async def on(self, interaction: Interaction) -> None:
        await _service(interaction).set_off(_me(interaction), False)
        await interaction.response.send_message(
            "Memory is on for you: personas that remember may save notes about you again "
            "(you are shown each one) and use the ones they have.",
            ephemeral=True,
        )

    @app_commands.command(name="export", description="Your notes, as a JSON file")
    async def export(self, interaction: Interaction) -> None:
        me = _me(interaction)
        data = await _service(interaction).export(me)
        body = json.dumps(data, ensure_ascii=False, indent=2).encode()
        await interaction.response.send_message(
            f"{len(data.get('notes', []))} note(s).",
            file=discord.File(io.BytesIO(body), filename=f"coterie-memory-{me}.json"),
            ephemeral=True,
        )

    # --- admins ----------------------------------------------------------------------

    @app_commands.command(
        name="members", description="How many notes personas keep about each member (admins)"
    )
    @require_privilege(Privilege.ADMIN)
    async def members(self, interaction: Interaction) -> None:
        actor = caller_from_interaction(interaction)
        counts = await _service(interaction).counts(actor, _guild(interaction))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        lines = [f"<@{user}>: {n} note(s)" for user, n in ranked]

        async def page(index: int) -> discord.Embed | None:
            chunk = lines[index * 20 : (index + 1) * 20]
            if not chunk:
                return None
            embed = discord.Embed(
                title="Notes per member in this server",
                description="\n".join(chunk),
                colour=COLOUR,
            )
            embed.set_footer(text="Counts only: what a note says is for its member to see.")
            return embed

        await send_paginated(
            interaction,
            page,
            page_count=max(1, -(-len(lines) // 20)),
            ephemeral=True,
            empty="No persona keeps notes about anyone in this server.",
        )

    @lore.command(
        name="add", description="A fact about this server a persona may use with everyone"
    )
    @app_commands.describe(persona="The persona that knows it", text="The fact (500 characters)")
    @require_privilege(Privilege.ADMIN)
    async def lore_add(
        self,
        interaction: Interaction,
        persona: PersonaArg,
        text: app_commands.Range[str, 1, 500],
    ) -> None:
        actor = caller_from_interaction(interaction)
        entry = await _service(interaction).add_lore(actor, _guild(interaction), persona.name, text)
        await interaction.response.send_message(
            f"Lore #{entry.id} for {entry.persona}: {entry.text}",
            ephemeral=True,
            allowed_mentions=_NO_PINGS,
        )

    @lore.command(name="list", description="What personas know about this server")
    @app_commands.describe(persona="Only this persona's")
    @app_commands.autocomplete(persona=persona_autocomplete)
    @require_privilege(Privilege.ADMIN)
    async def lore_list(self, interaction: Interaction, persona: str | None = None) -> None:
        entries = await _service(interaction).lore(_guild(interaction), _persona_name(persona))
        lines = [f"**#{n.id}** {n.persona}: {_excerpt(n.text, 300)}" for n in entries]

        async def page(index: int) -> discord.Embed | None:
            chunk = lines[index * PAGE : (index + 1) * PAGE]
            if not chunk:
                return None
            return discord.Embed(
                title="Lore in this server", description="\n".join(chunk), colour=COLOUR
            )

        await send_paginated(
            interaction,
            page,
            page_count=max(1, -(-len(lines) // PAGE)),
            ephemeral=True,
            empty="No lore here yet: /memory lore add.",
        )

    @lore.command(name="remove", description="Delete a lore entry")
    @app_commands.describe(entry="The entry's number")
    @require_privilege(Privilege.ADMIN)
    async def lore_remove(self, interaction: Interaction, entry: LoreArg) -> None:
        actor = caller_from_interaction(interaction)
        gone = await _service(interaction).remove_lore(actor, _guild(interaction), entry)
        await interaction.response.send_message(
            f"Removed lore #{gone.id} ({gone.persona}): {_excerpt(gone.text, 1800)}",
            ephemeral=True,
            allowed_mentions=_NO_PINGS,
        )


async def setup(bot: CoterieClient[MemoryApp]) -> None:
    await bot.add_cog(MemoryCog(bot))
