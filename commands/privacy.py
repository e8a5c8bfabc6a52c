"""/forgetme: a member deletes what coterie keeps about them (with a confirm button).

One orchestrator does it (:class:`adapters.services.deletion.DataDeletion`, the same
as ``coterie forget USER_ID``): their personas and skills, their schedules, thread
bindings and budget warnings are deleted; their audit runs and the admin actions
naming them stay for accounting, without content or identity; their budget keeps
counting (charges in the 7-day window, a limit an admin set, grants not yet expired,
under their id with nothing else), so forgetting never resets a budget. Works in a
server and in a DM; the answer is private.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord.client import CoterieClient
from adapters.discord.ui import confirm

if TYPE_CHECKING:
    from adapters.services.deletion import DataDeletion

__all__ = ["BUDGET_KEPT", "PROMPT", "PrivacyApp", "PrivacyCog", "setup"]

log = logging.getLogger("coterie.commands.privacy")

BUDGET_KEPT = (
    "Your budget is not reset: what you spent in the last 7 days, any limit an admin "
    "set for you and grants not yet expired stay under your id (amounts and times "
    "only: no names, reasons or runs) until they leave the 7-day window."
)

PROMPT = (
    "This deletes what coterie keeps about you, in every server: your personas and "
    "skills, your schedules, your persona threads' bindings and budget warnings. Your "
    "runs stay in the audit trail for accounting (when, which model, what it cost) but "
    "without your id, name, prompts or answers. "
    f"{BUDGET_KEPT} **This cannot be undone.**"
)


class PrivacyApp(Protocol):
    """What this cog needs of the app."""

    @property
    def deletion(self) -> DataDeletion: ...


Interaction = discord.Interaction[CoterieClient[PrivacyApp]]


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


async def setup(bot: CoterieClient[PrivacyApp]) -> None:
    await bot.add_cog(PrivacyCog(bot))
