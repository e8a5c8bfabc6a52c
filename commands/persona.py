"""/persona: list, show, create, edit, delete, default, export, import.

Thin by design: each callback parses, checks permission, calls
``app.personas`` (a :class:`personas.PersonaStore`) or ``app.guild_settings``
(the channel's default persona), and renders.
Errors are raised, never rendered here: the bot's one renderer
(``CoterieTree.on_error``) turns them into an ephemeral message. A modal's
errors do not pass through the command tree, so :class:`PersonaModal` hands
them to the same renderer.

What the cog reads from the app (at command time, never in ``setup``) is
:class:`PersonaApp`.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord.client import CoterieClient
from adapters.discord.history import read_attachment
from adapters.discord.identity import caller_from_interaction, require_privilege
from adapters.discord.options import PersonaArg, guild_key
from adapters.services.ports import GuildSettingsStore
from executor.agent import Privilege
from executor.errors import ConfigError
from executor.tools.registry import ToolRegistry
from personas.errors import PersonaFileError
from personas.model import DESCRIPTION_MAX, SYSTEM_PROMPT_MAX, Persona, parse_tools
from personas.store import PersonaStore

__all__ = ["MAX_IMPORT_BYTES", "PersonaApp", "PersonaCog", "PersonaModal", "setup"]

log = logging.getLogger("coterie.commands.persona")

MAX_IMPORT_BYTES = 32 * 1024  # a 4,000-character prompt plus front matter fits many times
IMPORT_SUFFIXES = (".md", ".markdown", ".txt")
EMBED_DESCRIPTION_MAX = 4096
CHOICE_NAME_MAX = 100
COLOUR = discord.Colour.blurple()


# --- reaching the app ---------------------------------------------------------------


class HasDefaultTier(Protocol):
    @property
    def default_tier(self) -> str: ...


class PersonaApp(Protocol):
    """What this cog needs of the app."""

    @property
    def personas(self) -> PersonaStore: ...

    @property
    def tools(self) -> ToolRegistry: ...

    @property
    def settings(self) -> HasDefaultTier: ...

    @property
    def guild_settings(self) -> GuildSettingsStore: ...


Interaction = discord.Interaction[CoterieClient[PersonaApp]]


def _store(interaction: Interaction) -> PersonaStore:
    return interaction.client.app.personas


_guild_id = guild_key


# --- rendering ----------------------------------------------------------------------


def _tools_text(p: Persona) -> str:
    return ", ".join(f"`{t}`" for t in p.tools) or "none"


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def list_embed(personas: list[Persona], *, default: str | None, guild_name: str) -> discord.Embed:
    lines: list[str] = []
    used = 0
    for i, p in enumerate(personas):
        star = " ⭐ *default here*" if p.name == default else ""
        line = (
            f"**{p.name}**{star} — {p.description or '*no description*'}\n"
            f"-# {p.origin} · tier `{p.tier}` · tools {_tools_text(p)}"
        )
        more = f"… and {len(personas) - i} more: type a name in /persona show"
        if used + len(line) + 1 > EMBED_DESCRIPTION_MAX - len(more) - 1:
            lines.append(more)
            break
        lines.append(line)
        used += len(line) + 1
    embed = discord.Embed(
        title=f"Personas in {guild_name}",
        description="\n".join(lines) or "No personas.",
        colour=COLOUR,
    )
    embed.set_footer(text="/persona show <name> for the details · /persona create for a new one")
    return embed


def show_embed(p: Persona) -> discord.Embed:
    prompt = p.system_prompt.replace("```", "`\u200b``")
    head = f"{p.description}\n\n" if p.description else ""
    room = EMBED_DESCRIPTION_MAX - len(head) - len("**System prompt**\n```\n\n```")
    embed = discord.Embed(
        title=p.name,
        description=f"{head}**System prompt**\n```\n{_fit(prompt, room)}\n```",
        colour=COLOUR,
    )
    embed.add_field(name="Tier", value=f"`{p.tier}`")
    embed.add_field(name="Tools", value=_fit(_tools_text(p), 1024))
    embed.add_field(name="Origin", value=p.origin)
    if p.temperature is not None:
        embed.add_field(name="Temperature", value=f"{p.temperature:g}")
    if p.created_by:
        embed.add_field(name="Created by", value=f"<@{p.created_by}>")
    if p.avatar_url:
        embed.set_thumbnail(url=p.avatar_url)
    return embed


# --- the create / edit form --------------------------------------------------------

Submit = Callable[[Interaction, Persona], Awaitable[None]]


class PersonaModal(discord.ui.Modal):
    """The persona form: name (create only), description, system prompt, tier, tools.

    Discord allows five inputs per modal, which is exactly these. Avatar and
    temperature are set by /persona import.
    """

    def __init__(
        self,
        *,
        title: str,
        submit: Submit,
        base: Persona | None,
        tiers: tuple[str, ...],
        default_tier: str,
        tool_names: list[str],
    ) -> None:
        super().__init__(
            title=_fit(title, 45), timeout=900, custom_id=f"persona:{secrets.token_hex(8)}"
        )
        self._submit = submit
        self._base = base
        self.name: discord.ui.TextInput[PersonaModal] | None = None
        if base is None:
            self.name = discord.ui.TextInput(
                custom_id="name",
                placeholder="e.g. travel-agent",
                min_length=2,
                max_length=32,
            )
            self.add_item(
                discord.ui.Label(
                    text="Name",
                    description="2-32 lowercase letters, digits and hyphens",
                    component=self.name,
                )
            )
        self.description = discord.ui.TextInput[PersonaModal](
            custom_id="description",
            default=base.description if base else None,
            placeholder="One line shown in /persona list",
            required=False,
            max_length=DESCRIPTION_MAX,
        )
        self.add_item(discord.ui.Label(text="Description", component=self.description))
        self.system_prompt = discord.ui.TextInput[PersonaModal](
            custom_id="system_prompt",
            style=discord.TextStyle.paragraph,
            default=base.system_prompt if base else None,
            placeholder="You are ... (who it is, how it answers, what it must not do)",
            max_length=SYSTEM_PROMPT_MAX,
        )
        self.add_item(
            discord.ui.Label(
                text="System prompt",
                description=f"At most {SYSTEM_PROMPT_MAX:,} characters",
                component=self.system_prompt,
            )
        )
        self.tier = discord.ui.TextInput[PersonaModal](
            custom_id="tier",
            default=base.tier if base else default_tier,
            max_length=32,
        )
        self.add_item(
            discord.ui.Label(
                text="Tier",
                description=_fit("One of: " + ", ".join(tiers), 100) if tiers else None,
                component=self.tier,
            )
        )
        self.tools = discord.ui.TextInput[PersonaModal](
            custom_id="tools",
            default=", ".join(base.tools) if base else None,
            placeholder="comma-separated, e.g. current_time, calculator",
            required=False,
            max_length=400,
        )
        self.add_item(
            discord.ui.Label(
                text="Tools",
                description=_fit("Available: " + ", ".join(tool_names), 100)
                if tool_names
                else "No tools are enabled on this deployment",
                component=self.tools,
            )
        )

    def persona(self) -> Persona:
        """The form's values as a Persona (validated by the store, not here)."""
        base = self._base or Persona(name="", system_prompt="")
        return replace(
            base,
            name=self.name.value if self.name is not None else base.name,
            description=self.description.value,
            system_prompt=self.system_prompt.value,
            tier=self.tier.value,
            tools=parse_tools(self.tools.value),
            builtin=False,
        )

    async def on_submit(self, interaction: discord.Interaction[Any], /) -> None:
        await self._submit(interaction, self.persona())

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception, /) -> None:  # type: ignore[override]
        # Why: a modal's errors bypass the command tree; hand them to its one renderer.
        await interaction.client.tree.on_error(interaction, error)


# --- the cog ------------------------------------------------------------------------


@app_commands.guild_only()
class PersonaCog(commands.GroupCog, group_name="persona", group_description="AI personas"):
    """/persona: the server's personas."""

    def __init__(self, bot: CoterieClient[PersonaApp]) -> None:
        self.bot = bot
        super().__init__()

    def _form(
        self,
        interaction: Interaction,
        *,
        title: str,
        base: Persona | None,
        submit: Submit,
    ) -> PersonaModal:
        app = interaction.client.app
        store = app.personas
        tools = app.tools
        default_tier = app.settings.default_tier
        if store.tiers and default_tier not in store.tiers:
            default_tier = store.tiers[0]
        return PersonaModal(
            title=title,
            submit=submit,
            base=base,
            tiers=store.tiers,
            default_tier=default_tier,
            tool_names=list(tools.enabled_names),
        )

    @app_commands.command(name="list")
    async def list_(self, interaction: Interaction) -> None:
        """List the personas of this server."""
        app = interaction.client.app
        found = await _store(interaction).list(_guild_id(interaction))
        default = None
        if interaction.channel_id:
            default = await app.guild_settings.channel_persona(str(interaction.channel_id))
        guild_name = interaction.guild.name if interaction.guild else "this server"
        await interaction.response.send_message(
            embed=list_embed(found, default=default, guild_name=guild_name)
        )

    @app_commands.command(name="show")
    @app_commands.describe(persona="The persona to show")
    async def show(self, interaction: Interaction, persona: PersonaArg) -> None:
        """Show a persona: its description, prompt, tier and tools."""
        await interaction.response.send_message(embed=show_embed(persona))

    @app_commands.command(name="create")
    async def create(self, interaction: Interaction) -> None:
        """Create a persona with a form."""
        guild_id = _guild_id(interaction)

        async def submit(submitted: Interaction, persona: Persona) -> None:
            created = await _store(submitted).create(
                guild_id, persona, by=caller_from_interaction(submitted)
            )
            await submitted.response.send_message(
                f"Created the persona **{created.name}**.",
                embed=show_embed(created),
                ephemeral=True,
            )

        await interaction.response.send_modal(
            self._form(interaction, title="New persona", base=None, submit=submit)
        )

    @app_commands.command(name="edit")
    @app_commands.describe(persona="The persona to edit (its creator or an admin)")
    async def edit(self, interaction: Interaction, persona: PersonaArg) -> None:
        """Edit a persona with a form (its creator or an admin)."""
        guild_id = _guild_id(interaction)
        # Refuse now rather than after the person has filled in the form.
        current = await _store(interaction).check_can_change(
            guild_id, persona.name, by=caller_from_interaction(interaction)
        )

        async def submit(submitted: Interaction, changed: Persona) -> None:
            saved = await _store(submitted).update(
                guild_id, changed, by=caller_from_interaction(submitted)
            )
            note = " (this server's override of the built-in)" if saved.overrides_builtin else ""
            await submitted.response.send_message(
                f"Saved the persona **{saved.name}**{note}.",
                embed=show_embed(saved),
                ephemeral=True,
            )

        await interaction.response.send_modal(
            self._form(interaction, title=f"Edit {current.name}", base=current, submit=submit)
        )

    @app_commands.command(name="delete")
    @app_commands.describe(persona="The persona to delete (its creator or an admin)")
    async def delete(self, interaction: Interaction, persona: PersonaArg) -> None:
        """Delete a persona (its creator or an admin)."""
        deleted = await _store(interaction).delete(
            _guild_id(interaction), persona.name, by=caller_from_interaction(interaction)
        )
        note = " The built-in persona of that name is back." if deleted.overrides_builtin else ""
        await interaction.response.send_message(
            f"Deleted the persona **{deleted.name}**.{note}", ephemeral=True
        )

    # Why no default_permissions: Discord only honours it on top-level commands, and on
    # /persona it would hide every subcommand. The check below is the real gate.
    @app_commands.command(name="default")
    @app_commands.describe(persona="The persona that answers here by default; leave empty to clear")
    @app_commands.checks.has_permissions(manage_channels=True)
    async def default(self, interaction: Interaction, persona: PersonaArg | None = None) -> None:
        """Set this channel's default persona (needs Manage Channels)."""
        if interaction.channel_id is None:
            raise ConfigError("this command needs a channel")
        name = persona.name if persona is not None else None
        await interaction.client.app.guild_settings.set_channel_persona(
            _guild_id(interaction), str(interaction.channel_id), name
        )
        if name is None:
            text = "This channel no longer has its own default persona."
        else:
            text = f"**{name}** now answers in this channel by default."
        await interaction.response.send_message(text)

    @app_commands.command(name="export")
    @app_commands.describe(persona="The persona to export")
    async def export(self, interaction: Interaction, persona: PersonaArg) -> None:
        """Export a persona as a Markdown file."""
        text = await _store(interaction).export_markdown(_guild_id(interaction), persona.name)
        file = discord.File(io.BytesIO(text.encode("utf-8")), filename=f"{persona.name}.md")
        await interaction.response.send_message(
            f"**{persona.name}**, ready for /persona import.", file=file, ephemeral=True
        )

    # Why Manage Server: a file from anywhere sets what the form cannot (avatar URL,
    # temperature, tools in bulk) and may replace a persona; checked here, on the
    # server side, before anything is downloaded or parsed.
    @app_commands.command(name="import")
    @app_commands.describe(
        file="A persona Markdown file (as made by /persona export), at most 32 KB",
        overwrite="Replace a persona of the same name",
    )
    @require_privilege(Privilege.ADMIN)
    async def import_(
        self,
        interaction: Interaction,
        file: discord.Attachment,
        overwrite: bool = False,
    ) -> None:
        """Import a persona from a Markdown file (needs Manage Server)."""
        filename = (file.filename or "upload")[:64]
        if not filename.lower().endswith(IMPORT_SUFFIXES):
            raise PersonaFileError(filename, "must be a Markdown file (.md)")
        if file.size > MAX_IMPORT_BYTES:
            raise PersonaFileError(
                filename,
                f"is {file.size / 1024:.0f} KB; the limit is {MAX_IMPORT_BYTES // 1024} KB",
            )
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            data = await read_attachment(file, max_bytes=MAX_IMPORT_BYTES)
        except discord.DiscordException as exc:
            raise PersonaFileError(
                filename, f"could not be downloaded from Discord ({exc})"
            ) from exc
        if data is None:
            raise PersonaFileError(filename, f"is larger than {MAX_IMPORT_BYTES // 1024} KB")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PersonaFileError(filename, "is not UTF-8 text") from exc
        imported = await _store(interaction).import_markdown(
            _guild_id(interaction),
            text,
            by=caller_from_interaction(interaction),
            source=filename,
            replace_existing=overwrite,
        )
        await interaction.followup.send(
            f"Imported the persona **{imported.name}**.", embed=show_embed(imported), ephemeral=True
        )


async def setup(bot: CoterieClient[PersonaApp]) -> None:
    await bot.add_cog(PersonaCog(bot))
