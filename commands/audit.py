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
subcommand.
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
from executor.agent import Privilege

if TYPE_CHECKING:
    from adapters.services.admin import AdminService
    from adapters.storage.admin import SqlAdminLog
    from adapters.storage.audit_queries import AuditQueries
    from adapters.storage.audit_sink import SqlAuditSink
    from adapters.storage.budget import SqlBudgetLedger

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
    def audit(self) -> SqlAuditSink: ...
    @property
    def audit_queries(self) -> AuditQueries: ...
    @property
    def budget(self) -> SqlBudgetLedger: ...
    @property
    def admin(self) -> AdminService: ...
    @property
    def admin_log(self) -> SqlAdminLog: ...
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
        from adapters.storage.audit_queries import RunFilter

        app = interaction.client.app
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
        await app.audit.flush()
        cursors: list[str | None] = [None]

        async def page(index: int) -> discord.Embed | None:
            # Why a cursor per page: the paginator asks pages in order, once each.
            if index >= len(cursors):
                return None
            found = await app.audit_queries.list_runs(where, limit=PAGE_SIZE, cursor=cursors[index])
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
        app = interaction.client.app
        gid = _guild(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await app.audit.flush()
        run_id = await app.audit_queries.resolve_run(run, guild_id=gid)
        detail = await app.audit_queries.get_run(run_id)
        if detail is None:  # deleted between the two reads
            await interaction.followup.send(f"No run `{run_id}`.", ephemeral=True)
            return
        r = detail.run
        before = after = limit = None
        if r.user_id.isdigit():
            before = await app.budget.spent_at(r.user_id, r.started_at)
            after = await app.budget.spent_at(r.user_id, r.ended_at or datetime.now(UTC))
            limit = (await app.budget.status(r.user_id)).limit_micros
        pages = run_detail_pages(
            detail, budget_before=before, budget_after=after, limit_micros=limit
        )
        attachment = output_file(r)
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
        from adapters.storage.audit_queries import RunFilter

        app = interaction.client.app
        gid = _guild(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await app.audit.flush()
        out = io.BytesIO()
        count = 0
        async for line in app.audit_queries.export_lines(
            RunFilter(guild_id=gid, since=since, until=until)
        ):
            out.write(line.encode())
            count += 1
            if out.tell() > EXPORT_MAX_BYTES:
                await interaction.followup.send(
                    f"That is more than {EXPORT_MAX_BYTES // (1024 * 1024)} MB of runs: give a "
                    "shorter span (`since`/`until`), or export from the host with "
                    "`coterie audit export --guild " + gid + "`.",
                    ephemeral=True,
                )
                return
        await app.admin.record(
            caller_from_interaction(interaction),
            "audit.export",
            guild_id=gid,
            detail={
                "runs": count,
                "since": since.isoformat() if since else None,
                "until": until.isoformat() if until else None,
            },
        )
        out.seek(0)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
        file = discord.File(
            out, filename=f"coterie-audit-{gid}-{stamp}.jsonl", description=f"{count} runs"
        )
        await interaction.followup.send(
            f"{count} run(s), one JSON object per line.", file=file, ephemeral=True
        )

    @app_commands.command(
        name="actions", description="Admin actions here: settings, limits, grants, exports"
    )
    @require_privilege(Privilege.ADMIN)
    async def actions(self, interaction: Interaction) -> None:
        app = interaction.client.app
        gid = _guild(interaction)
        cursors: list[str | None] = [None]

        async def page(index: int) -> discord.Embed | None:
            if index >= len(cursors):
                return None
            found = await app.admin_log.list(guild_id=gid, limit=PAGE_SIZE, cursor=cursors[index])
            if not found.entries:
                return None
            if found.next_cursor:
                cursors.append(found.next_cursor)
            return actions_page(found.entries)

        await interaction.response.defer(ephemeral=True, thinking=True)
        await send_paginated(interaction, page, ephemeral=True, empty="No admin actions yet.")


async def setup(bot: CoterieClient[AuditApp]) -> None:
    await bot.add_cog(AuditCog(bot))
