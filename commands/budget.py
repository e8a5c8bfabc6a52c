"""/budget: a member's own budget (``me``), and the admins' view and levers.

- ``/budget me`` (everyone, ephemeral): spent in the last 7 days, reserved now, the
  limit, and when enough spend rolls out of the window for a typical run.
- admins: ``show member``, ``set member limit`` (dollars, or ``default``), ``grant
  member amount reason``, ``top [days]``;
- ``chart [member] [days]``: spend per day stacked by persona or skill, a PNG drawn
  off the event loop. Everyone may chart their own spend; another member's, or the
  whole server's (no member, as an admin), needs an admin.

Privilege is checked on the server side by each admin subcommand (``/budget`` has no
``default_permissions``: ``me`` is for everyone). What is shown comes from
:class:`adapters.services.budgets.BudgetService`; limits and grants go through
:class:`adapters.services.admin.AdminService`, which records who did it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord.admin_views import (
    COLOUR,
    budget_embed,
    member_budget_embed,
    top_embed,
)
from adapters.discord.charts import chart_data, spend_chart
from adapters.discord.client import CoterieClient
from adapters.discord.identity import (
    PermissionDenied,
    caller_from_interaction,
    require_privilege,
)
from adapters.discord.options import MemberArg, MemberRef, member_ref
from adapters.services.errors import InvalidSetting
from executor.agent import Caller, Privilege
from executor.budget import BudgetStatus, dollars_to_micros, format_usd

if TYPE_CHECKING:
    from adapters.services.admin import AdminService
    from adapters.services.budgets import BudgetService

__all__ = ["BudgetApp", "BudgetCog", "parse_dollars", "setup"]

log = logging.getLogger("coterie.commands.budget")

_NO_PINGS = discord.AllowedMentions.none()


class BudgetApp(Protocol):
    """What this cog needs of the app."""

    @property
    def budget_service(self) -> BudgetService: ...
    @property
    def admin(self) -> AdminService: ...


Interaction = discord.Interaction[CoterieClient[BudgetApp]]


def parse_dollars(text: str) -> int | None:
    """``5``, ``$5.50``, ``5,000`` -> micro-dollars; ``default`` -> None."""
    value = text.strip().lower().replace(",", "").removeprefix("$").strip()
    if value in ("default", "reset", "none"):
        return None
    try:
        dollars = float(value)
    except ValueError as exc:
        raise InvalidSetting(
            f"“{text[:30]}” is not an amount: write dollars like 5 or 2.50 (or `default`)."
        ) from exc
    if not 0 <= dollars <= 1_000_000:
        raise InvalidSetting("An amount must be between $0 and $1,000,000.")
    return dollars_to_micros(dollars)


def _need_guild(interaction: Interaction) -> str:
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()
    return str(interaction.guild_id)


class BudgetCog(
    commands.GroupCog,
    group_name="budget",
    group_description="coterie budgets: yours, and the admins' levers",
):
    def __init__(self, bot: CoterieClient[BudgetApp]) -> None:
        self.bot = bot
        super().__init__()

    async def _status(self, member: MemberRef, interaction: Interaction) -> BudgetStatus:
        return await interaction.client.app.budget_service.status(_where(member, interaction))

    @app_commands.command(name="me", description="Your 7-day budget: spent, reserved, the limit")
    async def me(self, interaction: Interaction) -> None:
        view = await interaction.client.app.budget_service.mine(
            caller_from_interaction(interaction)
        )
        await interaction.response.send_message(
            embed=member_budget_embed(view), ephemeral=True, allowed_mentions=_NO_PINGS
        )

    @app_commands.command(name="show", description="A member's budget (admins)")
    @app_commands.describe(member="Whose budget")
    @require_privilege(Privilege.ADMIN)
    async def show(self, interaction: Interaction, member: MemberArg) -> None:
        sheet = await interaction.client.app.budget_service.sheet(_where(member, interaction))
        embed = budget_embed(
            f"{member.mention} ({member.display_name})",
            sheet.status,
            grants=sheet.grants,
            title=f"Budget of {member.display_name}",
        )
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=_NO_PINGS
        )

    @app_commands.command(name="set", description="Set a member's 7-day limit (admins)")
    @app_commands.describe(member="Whose limit", limit="Dollars per 7 days, or `default`")
    @require_privilege(Privilege.ADMIN)
    async def set_(
        self, interaction: Interaction, member: MemberArg, limit: app_commands.Range[str, 1, 30]
    ) -> None:
        micros = parse_dollars(limit)
        actor = caller_from_interaction(interaction)
        gid = str(interaction.guild_id) if interaction.guild_id else None
        await interaction.client.app.admin.set_limit(actor, member.user_id, micros, guild_id=gid)
        status = await self._status(member, interaction)
        said = (
            f"their own limit of {format_usd(micros, 2)}"
            if micros is not None
            else "the default limit again"
        )
        await interaction.response.send_message(
            f"{member.mention} now has {said}.",
            embed=budget_embed(member.mention, status, title=f"Budget of {member.display_name}"),
            ephemeral=True,
            allowed_mentions=_NO_PINGS,
        )

    @app_commands.command(
        name="grant", description="Give a member a one-off addition for 7 days (admins)"
    )
    @app_commands.describe(
        member="Who gets it", amount="Dollars", reason="Why (shown in the admin log)"
    )
    @require_privilege(Privilege.ADMIN)
    async def grant(
        self,
        interaction: Interaction,
        member: MemberArg,
        amount: app_commands.Range[float, 0.01, 1_000_000.0],
        reason: app_commands.Range[str, 1, 200],
    ) -> None:
        actor = caller_from_interaction(interaction)
        gid = str(interaction.guild_id) if interaction.guild_id else None
        micros = dollars_to_micros(amount)
        await interaction.client.app.admin.grant(
            actor, member.user_id, micros, reason=reason, guild_id=gid
        )
        status = await self._status(member, interaction)
        await interaction.response.send_message(
            f"Granted {format_usd(micros, 2)} to {member.mention} for the next 7 days.",
            embed=budget_embed(member.mention, status, title=f"Budget of {member.display_name}"),
            ephemeral=True,
            allowed_mentions=_NO_PINGS,
        )

    @app_commands.command(name="top", description="Who spent the most here (admins)")
    @app_commands.describe(days="How many days back (default 7)")
    @require_privilege(Privilege.ADMIN)
    async def top(self, interaction: Interaction, days: app_commands.Range[int, 1, 90] = 7) -> None:
        gid = _need_guild(interaction)
        top = await interaction.client.app.budget_service.top(gid, days=days)
        await interaction.response.send_message(
            embed=top_embed(top.rows, top.statuses, days=top.days),
            ephemeral=True,
            allowed_mentions=_NO_PINGS,
        )

    @app_commands.command(name="chart", description="Spend per day, stacked by persona or skill")
    @app_commands.describe(
        member="Whose spend (admins: anyone, or leave out for the whole server)",
        days="How many days (default 14)",
    )
    async def chart(
        self,
        interaction: Interaction,
        member: MemberArg | None = None,
        days: app_commands.Range[int, 1, 90] = 14,
    ) -> None:
        caller = caller_from_interaction(interaction)
        is_admin = caller.privilege >= Privilege.ADMIN
        if member is None and not is_admin:
            member = member_ref(interaction.user)
        if member is not None and member.user_id != caller.user_id and not is_admin:
            raise PermissionDenied(Privilege.ADMIN)
        gid = str(interaction.guild_id) if interaction.guild_id else None
        if member is None and gid is None:
            member = member_ref(interaction.user)
        # Why defer: the query and the drawing may pass Discord's 3 seconds.
        await interaction.response.defer(ephemeral=True, thinking=True)
        series = await interaction.client.app.budget_service.chart(
            guild_id=gid, user_id=member.user_id if member is not None else None, days=days
        )
        data = chart_data(series.rows, last_day=series.last_day, days=days)
        scope = member.display_name if member is not None else "this server"
        file = await spend_chart(
            data, title=f"Spend per day: {scope}, last {days} days", scope=scope
        )
        embed = discord.Embed(
            title=f"Spend per day: {scope}",
            description=f"{format_usd(data.total_micros)} over the last {days} days"
            + (f" ({series.zone.key})" if series.zone is not None else " (UTC)"),
            colour=COLOUR,
        )
        embed.set_image(url=f"attachment://{file.filename}")
        await interaction.followup.send(
            embed=embed, file=file, ephemeral=True, allowed_mentions=_NO_PINGS
        )


def _where(member: MemberRef, interaction: Interaction) -> Caller:
    """The member as a caller where they are asked about: their own guild when Discord
    sent them as a guild member, else the guild of the command."""
    context = member.caller()
    if context.guild_id is None and interaction.guild_id:
        context = MemberRef(
            user_id=member.user_id,
            display_name=member.display_name,
            roles=member.roles,
            guild_id=str(interaction.guild_id),
        ).caller()
    return context


async def setup(bot: CoterieClient[BudgetApp]) -> None:
    await bot.add_cog(BudgetCog(bot))
