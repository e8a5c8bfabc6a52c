"""/config: a guild's settings (admins). show, set, reset, answer-in, role-budget.

Memory's switches are here too: ``memory`` (on or off in this server), ``memory_shared``
(the server's personas share what they know about a member) and ``memory_confirm``
(members confirm each save with a button).

Each change goes through :class:`adapters.services.admin.AdminService`: validated,
stored, recorded in the admin log with who made it, and applied at once (the guild
settings store drops its cached copy). Privilege is checked on the server side for
every subcommand (``default_permissions`` only hides the command in Discord's UI).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, Protocol
from zoneinfo import available_timezones

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord.admin_views import config_embed
from adapters.discord.client import CoterieClient
from adapters.discord.identity import caller_from_interaction, require_privilege
from adapters.discord.options import (
    MAX_CHOICES,
    PersonaSearch,
    choice_label,
    persona_autocomplete,
)
from executor.agent import Privilege
from executor.budget import dollars_to_micros, format_usd

if TYPE_CHECKING:
    from adapters.services.admin import AdminService
    from adapters.services.ports import GuildSettingsStore

__all__ = ["ConfigApp", "ConfigCog", "setup"]

log = logging.getLogger("coterie.commands.config")

_NO_PINGS = discord.AllowedMentions.none()


class DeploymentDefaults(Protocol):
    @property
    def allow_dms(self) -> bool: ...
    @property
    def default_tier(self) -> str: ...
    @property
    def budget_default_usd(self) -> float: ...
    @property
    def critic_soft_runtime_s(self) -> float: ...
    @property
    def critic_soft_steps(self) -> int: ...
    @property
    def critic_hard_factor(self) -> float: ...


class ConfigApp(Protocol):
    """What this cog needs of the app."""

    @property
    def guild_settings(self) -> GuildSettingsStore: ...
    @property
    def admin(self) -> AdminService: ...
    @property
    def settings(self) -> DeploymentDefaults: ...
    @property
    def personas(self) -> PersonaSearch: ...


Interaction = discord.Interaction[CoterieClient[ConfigApp]]

Setting = Literal[
    "admin_channel",
    "default_persona",
    "default_tier",
    "timezone",
    "dms",
    "cost_footer",
    "budget",
    "critic_soft_runtime",
    "critic_soft_steps",
    "critic_hard_runtime",
    "answer_in",
    "role_budgets",
    "memory",
    "memory_shared",
    "memory_confirm",
]

# /config's option names -> GuildConfig fields.
FIELDS: dict[str, tuple[str, ...]] = {
    "admin_channel": ("admin_channel_id",),
    "default_persona": ("default_persona",),
    "default_tier": ("default_tier",),
    "timezone": ("timezone",),
    "dms": ("allow_dms",),
    "cost_footer": ("cost_footer",),
    "budget": ("budget_default_micros",),
    "critic_soft_runtime": ("critic_soft_runtime_s",),
    "critic_soft_steps": ("critic_soft_steps",),
    "critic_hard_runtime": ("critic_hard_runtime_s",),
    "answer_in": ("answer_channels", "answer_categories"),
    "role_budgets": ("role_budgets",),
    "memory": ("memory",),
    "memory_shared": ("memory_shared",),
    "memory_confirm": ("memory_confirm",),
}
_EMPTY: dict[str, Any] = {
    "answer_channels": (),
    "answer_categories": (),
    "role_budgets": (),
    "cost_footer": False,
    "memory_shared": False,
    "memory_confirm": False,
}


def _guild(interaction: Interaction) -> str:
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()
    return str(interaction.guild_id)


def deployment_defaults(s: DeploymentDefaults) -> dict[str, str]:
    return {
        "allow_dms": "on" if s.allow_dms else "off",
        "default_tier": s.default_tier,
        "budget": format_usd(dollars_to_micros(s.budget_default_usd), 2),
        "critic_soft_runtime_s": f"{s.critic_soft_runtime_s:g}",
        "critic_soft_steps": str(s.critic_soft_steps),
        "critic_hard_runtime_s": f"{s.critic_soft_runtime_s * s.critic_hard_factor:g}",
    }


async def tier_autocomplete(
    interaction: Interaction, current: str
) -> list[app_commands.Choice[str]]:
    tiers = interaction.client.app.admin.tiers
    typed = current.strip().lower()
    return [app_commands.Choice(name=t, value=t) for t in tiers if typed in t][:MAX_CHOICES]


async def timezone_autocomplete(
    interaction: Interaction, current: str
) -> list[app_commands.Choice[str]]:
    typed = current.strip().lower().replace(" ", "_")
    names = sorted(z for z in available_timezones() if typed in z.lower())
    names.sort(key=lambda z: (not z.lower().startswith(typed), len(z)))
    return [app_commands.Choice(name=choice_label(z), value=z) for z in names[:MAX_CHOICES]]


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ConfigCog(
    commands.GroupCog,
    group_name="config",
    group_description="coterie's settings for this server (admins)",
):
    def __init__(self, bot: CoterieClient[ConfigApp]) -> None:
        self.bot = bot
        super().__init__()

    async def _show(self, interaction: Interaction, *, note: str = "") -> None:
        app = interaction.client.app
        config = await app.guild_settings.guild(_guild(interaction))
        embed = config_embed(
            config,
            deployment=deployment_defaults(app.settings),
            guild_name=f"in {interaction.guild.name}" if interaction.guild else "",
        )
        await interaction.response.send_message(
            note or None, embed=embed, ephemeral=True, allowed_mentions=_NO_PINGS
        )

    @app_commands.command(name="show", description="This server's coterie settings")
    @require_privilege(Privilege.ADMIN)
    async def show(self, interaction: Interaction) -> None:
        await self._show(interaction)

    @app_commands.command(name="set", description="Change coterie's settings here; applies at once")
    @app_commands.describe(
        admin_channel="Where critic stops, kills and alerts are posted",
        default_persona="The persona that answers where no other is chosen",
        default_tier="The tier for personas on the deployment's default tier",
        timezone="IANA time zone for charts and days (e.g. Europe/Paris)",
        dms="Whether this server's members may talk to coterie in DMs",
        cost_footer="End answers with cost, model and time",
        budget="Members' default 7-day budget here, in dollars",
        critic_soft_runtime="Seconds before the critic starts judging a run",
        critic_soft_steps="Steps before the critic starts judging a run",
        critic_hard_runtime="Seconds after which a run is stopped",
        memory="Whether personas remember members here (their notes, and the lore)",
        memory_shared="Whether this server's personas share what they know about a member",
        memory_confirm="Whether members confirm each note a persona saves, with a button",
    )
    @app_commands.autocomplete(
        default_persona=persona_autocomplete,
        default_tier=tier_autocomplete,
        timezone=timezone_autocomplete,
    )
    @require_privilege(Privilege.ADMIN)
    async def set_(
        self,
        interaction: Interaction,
        admin_channel: discord.TextChannel | None = None,
        default_persona: str | None = None,
        default_tier: str | None = None,
        timezone: str | None = None,
        dms: bool | None = None,
        cost_footer: bool | None = None,
        budget: app_commands.Range[float, 0.0, 1_000_000.0] | None = None,
        critic_soft_runtime: app_commands.Range[float, 1.0, 86_400.0] | None = None,
        critic_soft_steps: app_commands.Range[int, 1, 1000] | None = None,
        critic_hard_runtime: app_commands.Range[float, 1.0, 86_400.0] | None = None,
        memory: bool | None = None,
        memory_shared: bool | None = None,
        memory_confirm: bool | None = None,
    ) -> None:
        changes: dict[str, Any] = {}
        if admin_channel is not None:
            changes["admin_channel_id"] = str(admin_channel.id)
        if default_persona is not None:
            changes["default_persona"] = default_persona
        if default_tier is not None:
            changes["default_tier"] = default_tier
        if timezone is not None:
            changes["timezone"] = timezone
        if dms is not None:
            changes["allow_dms"] = dms
        if cost_footer is not None:
            changes["cost_footer"] = cost_footer
        if budget is not None:
            changes["budget_default_micros"] = dollars_to_micros(budget)
        if critic_soft_runtime is not None:
            changes["critic_soft_runtime_s"] = critic_soft_runtime
        if critic_soft_steps is not None:
            changes["critic_soft_steps"] = critic_soft_steps
        if critic_hard_runtime is not None:
            changes["critic_hard_runtime_s"] = critic_hard_runtime
        for name, flag in (
            ("memory", memory),
            ("memory_shared", memory_shared),
            ("memory_confirm", memory_confirm),
        ):
            if flag is not None:
                changes[name] = flag
        if not changes:
            await self._show(interaction, note="Nothing to change: give one of the options.")
            return
        actor = caller_from_interaction(interaction)
        await interaction.client.app.admin.configure(actor, _guild(interaction), **changes)
        await self._show(interaction, note=f"Saved: {', '.join(sorted(changes))}.")

    @app_commands.command(
        name="reset", description="Return one setting to the deployment's default"
    )
    @app_commands.describe(setting="The setting to reset")
    @require_privilege(Privilege.ADMIN)
    async def reset(self, interaction: Interaction, setting: Setting) -> None:
        changes = {name: _EMPTY.get(name) for name in FIELDS[setting]}
        actor = caller_from_interaction(interaction)
        await interaction.client.app.admin.configure(actor, _guild(interaction), **changes)
        await self._show(interaction, note=f"Reset {setting} to the default.")

    @app_commands.command(
        name="answer-in", description="Where coterie answers: every channel, or a list"
    )
    @app_commands.describe(
        action="add to the list, remove from it, or answer everywhere again",
        channel="A channel to add or remove",
        category="A category (all its channels) to add or remove",
    )
    @require_privilege(Privilege.ADMIN)
    async def answer_in(
        self,
        interaction: Interaction,
        action: Literal["add", "remove", "everywhere"],
        channel: discord.TextChannel | None = None,
        category: discord.CategoryChannel | None = None,
    ) -> None:
        app = interaction.client.app
        actor = caller_from_interaction(interaction)
        gid = _guild(interaction)
        if action == "everywhere":
            await app.admin.answer_everywhere(actor, gid)
            await self._show(interaction, note="coterie answers in every channel again.")
            return
        if channel is None and category is None:
            await self._show(interaction, note="Name a channel or a category to add or remove.")
            return
        await app.admin.answer_in(
            actor,
            gid,
            add=action == "add",
            channel_id=str(channel.id) if channel else None,
            category_id=str(category.id) if category else None,
        )
        await self._show(interaction, note="Saved where coterie answers.")

    @app_commands.command(
        name="role-budget", description="A role's 7-day budget (no limit: remove it)"
    )
    @app_commands.describe(role="The role", limit="Dollars per 7 days; leave out to remove")
    @require_privilege(Privilege.ADMIN)
    async def role_budget(
        self,
        interaction: Interaction,
        role: discord.Role,
        limit: app_commands.Range[float, 0.0, 1_000_000.0] | None = None,
    ) -> None:
        actor = caller_from_interaction(interaction)
        micros = dollars_to_micros(limit) if limit is not None else None
        await interaction.client.app.admin.set_role_budget(
            actor, _guild(interaction), str(role.id), micros
        )
        said = f"{format_usd(micros, 2)} per 7 days" if micros is not None else "removed"
        await self._show(interaction, note=f"Budget of {role.mention}: {said}.")


async def setup(bot: CoterieClient[ConfigApp]) -> None:
    await bot.add_cog(ConfigCog(bot))
