"""/audit: what ran here, who ran it, what it cost, why it failed (admins).

- ``list [member] [persona] [skill] [status] [trigger] [since]``: newest first, ten
  runs a page, Previous / Next for the admin who asked (14 minutes), fetched page by
  page with the audit's cursor;
- ``show run``: a run in full, by its id or a unique prefix (autocomplete offers the
  recent ones);
- ``export [since] [until]``: this server's runs as JSON Lines, the format of
  ``coterie audit export``, as an attachment (recorded in the admin log);
- ``actions``: the admin log (settings, limits, grants, exports), newest first.

Only this server's runs are shown. Privilege is checked on the server side for every
subcommand (and, by the command tree, for their autocompletes). The reads go through
:class:`adapters.services.audit.AuditService`, the admin log through
:class:`adapters.services.admin.AdminService`: no cog touches storage.
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, Protocol

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord.admin_views import (
    actions_page,
    output_file,
    run_detail_pages,
    runs_page,
    send_embeds,
)
from adapters.discord.client import CoterieClient
from adapters.discord.identity import caller_from_interaction, require_privilege
from adapters.discord.options import (
    MemberArg,
    PersonaSearch,
    WhenArg,
    persona_autocomplete,
    run_autocomplete,
    skill_autocomplete,
)
from adapters.discord.ui import send_paginated
from adapters.services.audit import RunFilter
from executor.agent import Privilege

if TYPE_CHECKING:
    from adapters.services.admin import AdminService
    from adapters.services.audit import AuditService

__all__ = ["EXPORT_MAX_BYTES", "PAGE_SIZE", "AuditApp", "AuditCog", "setup"]

log = logging.getLogger("coterie.commands.audit")

PAGE_SIZE = 10
EXPORT_MAX_BYTES = 8 * 1024 * 1024  # a bot's attachment limit in any server
_NO_PINGS = discord.AllowedMentions.none()

Status = Literal[
    "ok",
    "error",
    "budget_denied",
    "budget_exhausted",
    "killed",
    "timeout",
    "cancelled",
    "refused",
    "step_limit",
    "token_limit",
    "interrupted",
    "running",
]
Trigger = Literal["chat", "slash", "schedule", "console", "cli"]


class AuditApp(Protocol):
    """What this cog needs of the app."""

    @property
    def audit_service(self) -> AuditService: ...
    @property
    def admin(self) -> AdminService: ...
    @property
    def personas(self) -> PersonaSearch: ...


Interaction = discord.Interaction[CoterieClient[AuditApp]]


def _guild(interaction: Interaction) -> str:
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()
    return str(interaction.guild_id)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class AuditCog(
    commands.GroupCog,
    group_name="audit",
    group_description="What coterie ran here, who ran it, what it cost (admins)",
):
    def __init__(self, bot: CoterieClient[AuditApp]) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="list", description="Runs here, newest first")
    @app_commands.describe(
        member="Runs this member started",
        persona="Runs of this persona",
        skill="Runs of this skill",
        status="Runs that ended so",
        trigger="How the runs started",
        since="Since when: 2h, 7d, 2w, or a date like 2026-01-31",
    )
    @app_commands.autocomplete(persona=persona_autocomplete, skill=skill_autocomplete)
    @require_privilege(Privilege.ADMIN)
    async def list_(
        self,
        interaction: Interaction,
        member: MemberArg | None = None,
        persona: str | None = None,
        skill: str | None = None,
        status: Status | None = None,
        trigger: Trigger | None = None,
        since: WhenArg | None = None,
    ) -> None:
        service = interaction.client.app.audit_service
        where = RunFilter(
            guild_id=_guild(interaction),
            user_id=member.user_id if member else None,
            persona=persona,
            skill=skill,
            status=status,
            trigger=trigger,
            since=since,
        )
        shown = [
            f"{k}: {v}"
            for k, v in (
                ("member", member.display_name if member else None),
                ("persona", persona),
                ("skill", skill),
                ("status", status),
                ("trigger", trigger),
                ("since", f"{since:%Y-%m-%d %H:%M} UTC" if since else None),
            )
            if v
        ]
        await interaction.response.defer(ephemeral=True, thinking=True)
        cursors: list[str | None] = [None]

        async def page(index: int) -> discord.Embed | None:
            # Why a cursor per page: the paginator asks pages in order, once each.
            if index >= len(cursors):
                return None
            found = await service.runs(where, limit=PAGE_SIZE, cursor=cursors[index])
            if not found.runs:
                return None
            if found.next_cursor:
                cursors.append(found.next_cursor)
            return runs_page(found.runs, title="Runs, newest first", filters=" · ".join(shown))

        await send_paginated(interaction, page, ephemeral=True, empty="No runs match.")

    @app_commands.command(name="show", description="One run in full")
    @app_commands.describe(run="The run's id, or the start of it")
    @app_commands.autocomplete(run=run_autocomplete)
    @require_privilege(Privilege.ADMIN)
    async def show(self, interaction: Interaction, run: app_commands.Range[str, 1, 64]) -> None:
        gid = _guild(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        view = await interaction.client.app.audit_service.run(gid, run)
        pages = run_detail_pages(
            view.detail,
            budget_before=view.spent_before,
            budget_after=view.spent_after,
            limit_micros=view.limit_micros,
        )
        attachment = output_file(view.detail.run)
        await send_embeds(
            interaction, pages, ephemeral=True, files=[attachment] if attachment else []
        )

    @app_commands.command(name="export", description="This server's runs as JSON Lines (a file)")
    @app_commands.describe(
        since="From when: 7d, 30d, or a date (default: everything)",
        until="Until when (default: now)",
    )
    @require_privilege(Privilege.ADMIN)
    async def export(
        self,
        interaction: Interaction,
        since: WhenArg | None = None,
        until: WhenArg | None = None,
    ) -> None:
        gid = _guild(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        done = await interaction.client.app.audit_service.export(
            caller_from_interaction(interaction),
            gid,
            since=since,
            until=until,
            max_bytes=EXPORT_MAX_BYTES,
        )
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
        file = discord.File(
            io.BytesIO(done.data),
            filename=f"coterie-audit-{gid}-{stamp}.jsonl",
            description=f"{done.runs} runs",
        )
        await interaction.followup.send(
            f"{done.runs} run(s), one JSON object per line.", file=file, ephemeral=True
        )

    @app_commands.command(
        name="actions", description="Admin actions here: settings, limits, grants, exports"
    )
    @require_privilege(Privilege.ADMIN)
    async def actions(self, interaction: Interaction) -> None:
        admin = interaction.client.app.admin
        gid = _guild(interaction)
        cursors: list[str | None] = [None]

        async def page(index: int) -> discord.Embed | None:
            if index >= len(cursors):
                return None
            found = await admin.actions(gid, limit=PAGE_SIZE, cursor=cursors[index])
            if not found.entries:
                return None
            if found.next_cursor:
                cursors.append(found.next_cursor)
            return actions_page(found.entries)

        await interaction.response.defer(ephemeral=True, thinking=True)
        await send_paginated(interaction, page, ephemeral=True, empty="No admin actions yet.")


async def setup(bot: CoterieClient[AuditApp]) -> None:
    await bot.add_cog(AuditCog(bot))
