"""/forgetme and /mydata: a member deletes, or downloads, what coterie keeps about them.

One orchestrator does both (:class:`adapters.services.deletion.DataDeletion`, the
same as ``coterie forget USER_ID`` and ``coterie export-member USER_ID``), asking every
store that keeps member data. /forgetme (with a confirm button): their personas and
skills, their schedules, memory notes, thread bindings and budget warnings are deleted;
their audit runs and the admin actions naming them stay for accounting, without content
or identity; their budget keeps counting (charges in the 7-day window, a limit an admin
set, grants not yet expired, under their id with nothing else), so forgetting never
resets a budget. /mydata: a JSON file of all of it (gzipped when it is big). Both work
in a server and in a DM; the answers are private.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from typing import TYPE_CHECKING, Protocol

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord.client import CoterieClient
from adapters.discord.ui import confirm

if TYPE_CHECKING:
    from adapters.services.deletion import DataDeletion

__all__ = ["BUDGET_KEPT", "PROMPT", "PrivacyApp", "PrivacyCog", "export_file", "setup"]

log = logging.getLogger("coterie.commands.privacy")

BUDGET_KEPT = (
    "Your budget is not reset: what you spent in the last 7 days, any limit an admin "
    "set for you and grants not yet expired stay under your id (amounts and times "
    "only: no names, reasons or runs) until they leave the 7-day window."
)

PROMPT = (
    "This deletes what coterie keeps about you, in every server: your personas and "
    "skills, your schedules, what personas remember about you, your persona threads' "
    "bindings and budget warnings. Your runs stay in the audit trail for accounting "
    "(when, which model, what it cost) but without your id, name, prompts or answers. "
    f"{BUDGET_KEPT} **This cannot be undone.**"
)


class PrivacyApp(Protocol):
    """What this cog needs of the app."""

    @property
    def deletion(self) -> DataDeletion: ...


Interaction = discord.Interaction[CoterieClient[PrivacyApp]]

#: What a bot may attach (Discord's default upload limit).
FILE_LIMIT = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES


def export_file(
    data: dict[str, object], user_id: str, *, limit: int = FILE_LIMIT
) -> discord.File | None:
    """``data`` as a JSON file, gzipped when it would pass ``limit``; None when even
    that is too big to attach."""
    body = json.dumps(data, ensure_ascii=False, indent=2, default=str).encode()
    name = f"coterie-data-{user_id}.json"
    if len(body) > limit:
        body, name = gzip.compress(body), name + ".gz"
        if len(body) > limit:
            return None
    return discord.File(io.BytesIO(body), filename=name)


class PrivacyCog(commands.Cog):
    def __init__(self, bot: CoterieClient[PrivacyApp]) -> None:
        self.bot = bot

    @app_commands.command(name="forgetme", description="Delete what coterie keeps about you")
    async def forgetme(self, interaction: Interaction) -> None:
        if not await confirm(interaction, PROMPT, confirm_label="Delete my data", danger=True):
            await interaction.followup.send("Nothing was deleted.", ephemeral=True)
            return
        report = await interaction.client.app.deletion.forget(str(interaction.user.id))
        await interaction.followup.send(
            f"Done: coterie forgot you ({report.summary()}). {BUDGET_KEPT}",
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @app_commands.command(name="mydata", description="Download what coterie keeps about you")
    async def mydata(self, interaction: Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        me = str(interaction.user.id)
        data = await interaction.client.app.deletion.export(me)
        file = export_file(data, me)
        if file is None:
            await interaction.followup.send(
                "What coterie keeps about you is too big to attach here; ask the "
                "operator of this bot for it (`coterie export-member`).",
                ephemeral=True,
            )
            return
        parts = ", ".join(sorted(data.get("data", {})))
        await interaction.followup.send(
            f"Everything coterie keeps about you ({parts}). /forgetme deletes it.",
            file=file,
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


async def setup(bot: CoterieClient[PrivacyApp]) -> None:
    await bot.add_cog(PrivacyCog(bot))
