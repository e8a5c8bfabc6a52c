"""/skill: save, version, run and schedule skills. Thin: parse, check, call, render.

A skill is a saved agent task owned by a member: a prompt template with named
arguments (``{topic}``), run as a persona, charged to its owner. The skill service
(:class:`adapters.services.skills.SkillService`) runs and schedules them; the store
(:class:`skills.store.SkillStore`) keeps their versions. Errors are raised, never
rendered here: the bot's one renderer turns them into an ephemeral message.

Who may schedule: Manage Server, or the role named by ``COTERIE_SCHEDULER_ROLE``;
checked here, on the server side (``default_permissions`` is only a hint). Who may
change, delete or unschedule is the skill service's rule; an option that names a
skill hands the cog the skill (:data:`SkillArg`), and the cog hands it on.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord.client import CoterieClient
from adapters.discord.identity import caller_from_interaction
from adapters.discord.options import (
    MAX_CHOICES,
    choice_label,
    guild_key,
    persona_autocomplete,
)
from adapters.discord.surface import DiscordSurface
from adapters.services.skills import PastRun, ScheduleRequest, SkillService
from executor.budget import format_usd
from skills.errors import ArgumentError, ScheduleError, SkillFileError
from skills.model import DESCRIPTION_MAX, PROMPT_MAX, SkillInfo, SkillSpec, parse_arguments

if TYPE_CHECKING:
    from adapters.services.chat import ChatService
    from personas.store import PersonaStore
    from skills.model import SkillVersionInfo
    from skills.schedules import ScheduleInfo, ScheduleStore
    from skills.store import SkillStore

__all__ = ["SkillApp", "SkillCog", "setup"]

log = logging.getLogger("coterie.commands.skill")

MAX_IMPORT_BYTES = 32 * 1024
COLOUR = discord.Colour.teal()


class SkillSettings(Protocol):
    @property
    def scheduler_role(self) -> str | None: ...


class SkillApp(Protocol):
    """What this cog needs of the app."""

    @property
    def skills(self) -> SkillStore: ...

    @property
    def schedules(self) -> ScheduleStore: ...

    @property
    def skill_service(self) -> SkillService: ...

    @property
    def chat(self) -> ChatService: ...

    @property
    def personas(self) -> PersonaStore: ...

    @property
    def settings(self) -> SkillSettings: ...


Interaction = discord.Interaction[CoterieClient[SkillApp]]


# --- helpers ---------------------------------------------------------------------------


def _ts(when: datetime | None) -> str:
    if when is None:
        return "not scheduled"
    t = int(when.timestamp())
    return f"<t:{t}:F> (<t:{t}:R>)"


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tool_names(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.strip() for t in text.replace(";", ",").split(",") if t.strip()))


class MayNotSchedule(app_commands.CheckFailure):
    """Neither Manage Server nor the scheduler role; the message is written for the person.

    Why a subclass: the renderer shows a bare ``CheckFailure`` as "You can't use this
    command here." (discord.py's own messages are for developers), a subclass as is.
    """


def may_schedule(interaction: Interaction, role: str | None) -> bool:
    """Manage Server, or the configured scheduler role (by name or id), or an owner."""
    user = interaction.user
    if interaction.client.owner_user_ids and user.id in interaction.client.owner_user_ids:
        return True
    if not isinstance(user, discord.Member):
        return False
    if user.guild_permissions.manage_guild or user.guild_permissions.administrator:
        return True
    return role is not None and any(r.name == role or str(r.id) == role for r in user.roles)


async def skill_autocomplete(
    interaction: Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The member's skills first, then the guild's; 25 at most."""
    store = interaction.client.app.skills
    gid = guild_key(interaction)
    mine = await store.search(gid, current, owner_id=str(interaction.user.id), limit=MAX_CHOICES)
    rest = await store.search(gid, current, limit=MAX_CHOICES)
    seen: set[str] = set()
    out: list[app_commands.Choice[str]] = []
    for s in [*mine, *rest]:
        if s.name not in seen:
            seen.add(s.name)
            out.append(app_commands.Choice(name=choice_label(s.name, s.description), value=s.name))
    return out[:MAX_CHOICES]


class SkillTransformer(app_commands.Transformer[Any]):
    """A skill's name typed in a slash command -> the :class:`SkillInfo` it names.

    An unknown name raises ``SkillNotFound``; discord.py wraps it in a
    ``TransformerError`` whose cause the renderer shows."""

    async def transform(self, interaction: Interaction, value: Any) -> SkillInfo:
        return await interaction.client.app.skills.get(guild_key(interaction), str(value))

    async def autocomplete(  # type: ignore[override]
        self, interaction: Interaction, value: str
    ) -> list[app_commands.Choice[str]]:
        return await skill_autocomplete(interaction, value)


SkillArg = app_commands.Transform[SkillInfo, SkillTransformer]


async def args_autocomplete(
    interaction: Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Suggest ``name=`` for the arguments the chosen skill's template still needs."""
    name = getattr(interaction.namespace, "name", None)
    if not name:
        return []
    store = interaction.client.app.skills
    skill = await store.find(guild_key(interaction), str(name))
    if skill is None:
        return []
    version = await store.version(skill)
    done, _, _typing = current.rpartition(";")
    try:
        given = parse_arguments(done)
    except ArgumentError:  # a half-typed earlier pair: suggest from scratch
        given = {}
    head = f"{done}; " if done else ""
    wanted = [a for a in version.spec.arguments if a not in given]
    return [
        app_commands.Choice(name=_fit(f"{head}{a}=", 100), value=_fit(f"{head}{a}=", 100))
        for a in wanted
    ][:MAX_CHOICES]


def show_embed(
    skill: SkillInfo,
    version: SkillVersionInfo,
    versions: list[SkillVersionInfo],
    schedules: list[ScheduleInfo],
    runs: list[PastRun],
) -> discord.Embed:
    spec = version.spec
    embed = discord.Embed(
        title=f"/{skill.name} · v{version.version}",
        description=_fit(spec.description or "*no description*", 300),
        colour=COLOUR,
    )
    embed.add_field(name="Owner", value=f"<@{skill.owner_id}>")
    embed.add_field(name="Persona", value=spec.persona or "the server's default")
    embed.add_field(name="Tier", value=spec.tier or "the persona's")
    embed.add_field(name="Arguments", value=", ".join(f"`{a}`" for a in spec.arguments) or "none")
    embed.add_field(name="Tools", value=", ".join(f"`{t}`" for t in spec.tools) or "none")
    bounds = []
    if spec.max_steps:
        bounds.append(f"{spec.max_steps} steps")
    if spec.max_runtime_s:
        bounds.append(f"{spec.max_runtime_s:g} s")
    embed.add_field(name="Bounds", value=", ".join(bounds) or "the persona's")
    embed.add_field(name="Prompt", value=_fit(f"```\n{spec.prompt}\n```", 1024), inline=False)
    if versions:
        lines = [
            f"v{v.version}{' (current)' if v.version == skill.current_version else ''}"
            f" · <@{v.created_by}>" + (f" · {v.note}" if v.note else "")
            for v in versions[-10:]
        ]
        embed.add_field(name="Versions", value=_fit("\n".join(lines), 1024), inline=False)
    if schedules:
        lines = [_schedule_line(s) for s in schedules[:10]]
        embed.add_field(name="Schedules", value=_fit("\n".join(lines), 1024), inline=False)
    if runs:
        lines = [f"`{r.run_id[:8]}` {r.status} · {format_usd(r.cost_micros)}" for r in runs[:5]]
        embed.add_field(name="Last runs", value="\n".join(lines), inline=False)
    if not skill.enabled:
        embed.set_footer(text="disabled")
    return embed


def _schedule_line(s: ScheduleInfo) -> str:
    what = f"`{s.cron}`" if s.cron else "once"
    state = "" if s.enabled else f" · off: {s.disabled_reason or 'disabled'}"
    last = f" · last {s.last_status}" if s.last_status else ""
    return (
        f"#{s.id} {what} {s.timezone} in <#{s.channel_id}> · next "
        f"{_ts(s.next_run_at) if s.enabled else '—'}{last}{state}"
    )


# --- the form -------------------------------------------------------------------------

Submit = Callable[[Interaction, str, SkillSpec], Awaitable[None]]


class SkillModal(discord.ui.Modal):
    """The skill's prompt and description (long prompts do not fit a slash option)."""

    def __init__(self, *, title: str, name: str, base: SkillSpec | None, submit: Submit) -> None:
        super().__init__(
            title=_fit(title, 45), timeout=900, custom_id=f"skill:{secrets.token_hex(8)}"
        )
        self._submit = submit
        self._name = name
        self._base = base or SkillSpec(prompt="")
        self.prompt = discord.ui.TextInput["SkillModal"](
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=self._base.prompt or None,
            placeholder="Summarise what was posted in #reading about {topic} as three bullets",
            max_length=PROMPT_MAX,
        )
        self.add_item(
            discord.ui.Label(
                text="Prompt",
                description="Name arguments in braces: {topic}",
                component=self.prompt,
            )
        )
        self.description = discord.ui.TextInput["SkillModal"](
            custom_id="description",
            default=self._base.description or None,
            required=False,
            max_length=DESCRIPTION_MAX,
        )
        self.add_item(discord.ui.Label(text="Description", component=self.description))

    async def on_submit(self, interaction: discord.Interaction[Any], /) -> None:
        from dataclasses import replace

        spec = replace(self._base, prompt=self.prompt.value, description=self.description.value)
        await self._submit(interaction, self._name, spec)

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception, /) -> None:  # type: ignore[override]
        await interaction.client.tree.on_error(interaction, error)


# --- the cog ----------------------------------------------------------------------------


@app_commands.guild_only()
class SkillCog(commands.GroupCog, group_name="skill", group_description="Saved agent tasks"):
    """/skill: the server's skills."""

    def __init__(self, bot: CoterieClient[SkillApp]) -> None:
        self.bot = bot
        super().__init__()

    def _store(self) -> SkillStore:
        return self.bot.app.skills

    async def _saved(self, interaction: Interaction, name: str, spec: SkillSpec) -> None:
        info, version = await self._store().save(
            guild_key(interaction), name, spec, by=caller_from_interaction(interaction)
        )
        verb = "Saved" if version.version == 1 else f"Saved version {version.version} of"
        args = ", ".join(f"`{a}`" for a in spec.arguments)
        tail = f" Arguments: {args}." if args else ""
        await interaction.response.send_message(
            f"{verb} the skill **{info.name}**.{tail} Run it with `/skill run name:{info.name}`.",
            ephemeral=True,
        )

    @app_commands.command(name="save")
    @app_commands.describe(
        name="1-32 lowercase letters, digits and dashes",
        prompt="What to ask; leave empty to write it in a form. Arguments: {topic}",
        persona="Which persona runs it (default: the server's)",
        description="One line shown in /skill list",
        tier="Which model tier (default: the persona's)",
        tools="Tools it may use, comma-separated (at most your own rights), e.g. web_fetch",
    )
    @app_commands.autocomplete(persona=persona_autocomplete)
    async def save(
        self,
        interaction: Interaction,
        name: app_commands.Range[str, 1, 32],
        prompt: app_commands.Range[str, 1, PROMPT_MAX] | None = None,
        persona: str | None = None,
        description: app_commands.Range[str, 0, DESCRIPTION_MAX] | None = None,
        tier: str | None = None,
        tools: app_commands.Range[str, 0, 400] | None = None,
    ) -> None:
        """Save a skill, or a new version of yours."""
        from skills.model import check_name

        clean = check_name(name)
        store = self._store()
        existing = await store.find(guild_key(interaction), clean)
        base = (await store.version(existing)).spec if existing is not None else None
        spec = SkillSpec(
            prompt=prompt or (base.prompt if base else ""),
            persona=persona if persona is not None else (base.persona if base else None),
            tier=tier if tier is not None else (base.tier if base else None),
            tools=_tool_names(tools) if tools is not None else (base.tools if base else ()),
            max_steps=base.max_steps if base else None,
            max_runtime_s=base.max_runtime_s if base else None,
            description=description
            if description is not None
            else (base.description if base else ""),
        )
        if prompt is None:
            title = f"Edit {clean}" if existing else f"New skill {clean}"
            await interaction.response.send_modal(
                SkillModal(title=title, name=clean, base=spec, submit=self._saved)
            )
            return
        await self._saved(interaction, clean, spec)

    @app_commands.command(name="edit")
    @app_commands.describe(name="The skill to edit (yours, or any as an admin)")
    async def edit(self, interaction: Interaction, name: SkillArg) -> None:
        """Edit a skill's prompt in a form (a new version)."""
        skill = name
        self.bot.app.skill_service.check_may_change(skill, caller_from_interaction(interaction))
        version = await self._store().version(skill)
        await interaction.response.send_modal(
            SkillModal(
                title=f"Edit {skill.name}", name=skill.name, base=version.spec, submit=self._saved
            )
        )

    @app_commands.command(name="run")
    @app_commands.describe(name="The skill to run", args="Its arguments: key=value; key2=value2")
    @app_commands.autocomplete(name=skill_autocomplete, args=args_autocomplete)
    async def run(
        self,
        interaction: Interaction,
        name: str,
        args: app_commands.Range[str, 0, 2000] | None = None,
    ) -> None:
        """Run a skill now, here, as its persona."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            await interaction.followup.send("I can't post in this channel.", ephemeral=True)
            return
        service = self.bot.app.skill_service

        async def announce(skill: SkillInfo, version: SkillVersionInfo) -> None:
            await interaction.followup.send(
                f"Running **{skill.name}** v{version.version} below.", ephemeral=True
            )

        me = self.bot.user
        surface = DiscordSurface(
            channel,
            requester_id=interaction.user.id,
            bot_user_id=me.id if me else None,
            webhooks=self.bot.webhooks,
            approvals=self.bot.approvals,
            limits=self.bot.app.chat.limits,
        )
        # A missing argument or persona is refused before anything is posted.
        await service.run(
            guild_key(interaction),
            name,
            caller=caller_from_interaction(interaction),
            surface=surface,
            arguments=args,
            announce=announce,
        )

    @app_commands.command(name="list")
    @app_commands.describe(scope="Only yours, or the whole server's")
    async def list_(
        self, interaction: Interaction, scope: Literal["mine", "guild"] = "guild"
    ) -> None:
        """List skills."""
        owner = str(interaction.user.id) if scope == "mine" else None
        found = await self._store().list(guild_key(interaction), owner_id=owner)
        if not found:
            text = "You have no skills yet." if owner else "This server has no skills yet."
            await interaction.response.send_message(
                text + " Save one with `/skill save`.", ephemeral=True
            )
            return
        lines = [
            f"**{s.name}** v{s.current_version} · <@{s.owner_id}>"
            + (f" — {_fit(s.description, 80)}" if s.description else "")
            + ("" if s.enabled else " · *disabled*")
            for s in found
        ]
        from adapters.discord.split import split_message

        pages = split_message("\n".join(lines), limit=4000)
        embed = discord.Embed(
            title="Your skills" if owner else "Skills here", colour=COLOUR, description=pages[0]
        )
        if len(pages) > 1:
            embed.set_footer(text=f"{len(found)} skills; type a name in /skill show for more")
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @app_commands.command(name="show")
    @app_commands.describe(name="The skill to show")
    async def show(self, interaction: Interaction, name: SkillArg) -> None:
        """Show a skill: versions, arguments, schedules, last runs with their cost."""
        app = self.bot.app
        skill = name
        version = await app.skills.version(skill)
        versions = await app.skills.versions(skill.id)
        schedules = await app.schedules.for_skill(skill.id)
        runs = await app.skill_service.recent_runs(skill.guild_id, skill.name)
        await interaction.response.send_message(
            embed=show_embed(skill, version, versions, schedules, runs), ephemeral=True
        )

    @app_commands.command(name="rollback")
    @app_commands.describe(name="The skill", version="The version to restore (as a new version)")
    async def rollback(
        self, interaction: Interaction, name: SkillArg, version: app_commands.Range[int, 1, 10_000]
    ) -> None:
        """Restore an earlier version of a skill."""
        restored = await self._store().rollback(
            name.guild_id, name.name, version, by=caller_from_interaction(interaction)
        )
        await interaction.response.send_message(
            f"**{name.name}** is back to v{version}'s prompt, as v{restored.version}.",
            ephemeral=True,
        )

    @app_commands.command(name="delete")
    @app_commands.describe(name="The skill to delete (yours, or any as an admin)")
    async def delete(self, interaction: Interaction, name: SkillArg) -> None:
        """Delete a skill and its schedules."""
        deleted = await self.bot.app.skill_service.delete(
            name, caller_from_interaction(interaction)
        )
        tail = f" and its {deleted.schedules} schedule(s)" if deleted.schedules else ""
        await interaction.response.send_message(
            f"Deleted **{deleted.skill.name}**{tail}.", ephemeral=True
        )

    @app_commands.command(name="export")
    @app_commands.describe(name="The skill to export")
    async def export(self, interaction: Interaction, name: SkillArg) -> None:
        """Export a skill as a Markdown file."""
        text = await self._store().export_markdown(name.guild_id, name.name)
        file = discord.File(io.BytesIO(text.encode("utf-8")), filename=f"{name.name}.md")
        await interaction.response.send_message(
            f"**{name.name}**, ready for /skill import.", file=file, ephemeral=True
        )

    @app_commands.command(name="import")
    @app_commands.describe(file="A skill Markdown file (as made by /skill export), at most 32 KB")
    async def import_(self, interaction: Interaction, file: discord.Attachment) -> None:
        """Import a skill from a Markdown file."""
        filename = (file.filename or "upload")[:64]
        if not filename.lower().endswith((".md", ".markdown", ".txt")):
            raise SkillFileError(filename, "must be a Markdown file (.md)")
        if file.size > MAX_IMPORT_BYTES:
            raise SkillFileError(filename, f"is larger than {MAX_IMPORT_BYTES // 1024} KB")
        await interaction.response.defer(ephemeral=True, thinking=True)
        from adapters.discord.history import read_attachment

        data = await read_attachment(file, max_bytes=MAX_IMPORT_BYTES)
        if data is None:
            raise SkillFileError(filename, f"is larger than {MAX_IMPORT_BYTES // 1024} KB")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SkillFileError(filename, "is not UTF-8 text") from exc
        info, version = await self._store().import_markdown(
            guild_key(interaction), text, by=caller_from_interaction(interaction), source=filename
        )
        await interaction.followup.send(
            f"Imported **{info.name}** (v{version.version}).", ephemeral=True
        )

    # --- schedules -------------------------------------------------------------------

    @app_commands.command(name="schedule")
    @app_commands.describe(
        name="The skill to schedule",
        cron="Repeat: five fields, e.g. `0 9 * * 1-5` (weekdays at 9:00)",
        at="Once: 2026-12-24T09:00, or in 10m / in 2h",
        args="Its arguments: key=value; key2=value2",
        timezone="An IANA zone like Europe/Paris (default UTC)",
        channel="Where it posts (default: here)",
        missed="A run missed while coterie was down: skip it, or catch up once",
    )
    @app_commands.autocomplete(name=skill_autocomplete, args=args_autocomplete)
    async def schedule(
        self,
        interaction: Interaction,
        name: str,
        cron: app_commands.Range[str, 1, 120] | None = None,
        at: app_commands.Range[str, 1, 64] | None = None,
        args: app_commands.Range[str, 0, 2000] | None = None,
        timezone: app_commands.Range[str, 1, 64] = "UTC",
        channel: discord.TextChannel | None = None,
        missed: Literal["skip", "catch-up"] = "skip",
    ) -> None:
        """Run a skill on a schedule (Manage Server or the scheduler role)."""
        app = self.bot.app
        if not may_schedule(interaction, app.settings.scheduler_role):
            role = app.settings.scheduler_role
            need = f"Manage Server or the **{role}** role" if role else "Manage Server"
            raise MayNotSchedule(f"You need {need} to schedule skills.")
        target = channel or interaction.channel
        if not isinstance(target, discord.TextChannel | discord.Thread):
            raise ScheduleError(
                "schedules post in a text channel or thread; pick one with channel:"
            )
        perms = target.permissions_for(target.guild.me)
        if not (perms.view_channel and perms.send_messages):
            raise ScheduleError(f"I can't post in {target.mention}; pick another channel")
        owner = caller_from_interaction(interaction)
        request = ScheduleRequest(
            guild_id=guild_key(interaction),
            name=name,
            channel_id=str(target.id),
            owner=owner,
            cron=cron,
            at=at,
            arguments=args,
            timezone=timezone,
            missed=missed,
        )
        service = app.skill_service
        skill, _version, preview = await service.plan(request)
        cost = (
            f"About {format_usd(preview.per_run_micros)} a run "
            f"({'the median of its last runs' if preview.basis == 'history' else 'an estimate'}),"
            f" {preview.runs_per_week:g} a week: {format_usd(preview.weekly_micros)}, "
            f"{preview.share:.0%} of your 7-day budget."
        )
        if preview.verdict == "confirm":
            from adapters.discord.ui import confirm

            if not await confirm(
                interaction, f"{cost} Schedule it anyway?", confirm_label="Schedule"
            ):
                await interaction.followup.send("Not scheduled.", ephemeral=True)
                return
        info, next_run = await service.create_schedule(request, skill)
        text = (
            f"Scheduled **{skill.name}** (#{info.id}) in {target.mention}: next run {_ts(next_run)}.\n"
            f"-# {cost}"
        )
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="unschedule")
    @app_commands.describe(
        name="The skill", schedule="Which of its schedules (default: all of yours)"
    )
    async def unschedule(
        self, interaction: Interaction, name: SkillArg, schedule: int | None = None
    ) -> None:
        """Remove a skill's schedule."""
        removed = await self.bot.app.skill_service.unschedule(
            name, caller_from_interaction(interaction), schedule
        )
        ids = ", ".join(f"#{s.id}" for s in removed)
        await interaction.response.send_message(
            f"Removed schedule {ids} of **{name.name}**.", ephemeral=True
        )

    @app_commands.command(name="schedules")
    @app_commands.describe(scope="Only yours, or the whole server's")
    async def schedules(
        self, interaction: Interaction, scope: Literal["mine", "guild"] = "mine"
    ) -> None:
        """List schedules with their next run."""
        app = self.bot.app
        by = str(interaction.user.id) if scope == "mine" else None
        found = await app.schedules.list(guild_key(interaction), created_by=by)
        if not found:
            await interaction.response.send_message("No schedules.", ephemeral=True)
            return
        names = {s.id: s.name for s in await app.skills.list(guild_key(interaction))}
        lines = [f"**{names.get(s.skill_id, '?')}** {_schedule_line(s)}" for s in found]
        embed = discord.Embed(
            title="Your schedules" if by else "Schedules here",
            description=_fit("\n".join(lines), 4000),
            colour=COLOUR,
        )
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )


async def setup(bot: CoterieClient[SkillApp]) -> None:
    await bot.add_cog(SkillCog(bot))
