"""Approving a tool call: Approve/Deny buttons for the member who asked.

The executor's one approver (:class:`adapters.services.approval.DeliveryApprover`)
hands each request to the run's own delivery; a Discord delivery asks here, with
buttons.

Only the member who asked may press the buttons (anyone else is told, privately,
that it is not theirs); no answer within the timeout counts as deny.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import discord

from adapters.discord.ui import ConfirmView
from executor.ports import ApprovalDecision, ApprovalRequest

__all__ = ["ApprovalView", "ask_with_buttons"]

log = logging.getLogger(__name__)

_NO_PINGS = discord.AllowedMentions.none()


class ApprovalView(ConfirmView):
    """Approve / Deny, pressable by ``requester_id`` only (a :class:`ConfirmView`)."""

    def __init__(self, requester_id: int, *, timeout: float) -> None:
        super().__init__(
            requester_id,
            timeout=timeout,
            confirm_label="Approve",
            cancel_label="Deny",
            confirm_style=discord.ButtonStyle.success,
            cancel_style=discord.ButtonStyle.danger,
            refusal="Not yours: only the member who asked can approve this.",
        )
        self.decision: ApprovalDecision | None = None

    @property
    def requester_id(self) -> int:
        return self.author_id

    async def on_choice(self, interaction: discord.Interaction[Any], confirmed: bool) -> None:
        self.decision = ApprovalDecision(
            approved=confirmed,
            reason="" if confirmed else f"{interaction.user.display_name} denied it",
        )
        verdict = "Approved" if confirmed else "Denied"
        content = f"{interaction.message.content if interaction.message else ''}\n-# {verdict}."
        await interaction.response.edit_message(
            content=content[:2000], view=self, allowed_mentions=_NO_PINGS
        )


def describe(request: ApprovalRequest) -> str:
    args = json.dumps(request.arguments, ensure_ascii=False, default=str)
    if len(args) > 1500:
        args = args[:1500] + "…"
    if request.again:
        # A resumed run: the call had started before the restart and may have run.
        return (
            f"A restart interrupted the tool **{request.tool}**: it may have run already. "
            f"Run it again?\n```json\n{args}\n```"
        )
    return f"Allow the tool **{request.tool}** to run?\n```json\n{args}\n```"


async def ask_with_buttons(
    channel: discord.abc.Messageable,
    request: ApprovalRequest,
    *,
    requester_id: int,
    wait_s: float = 120.0,
) -> ApprovalDecision:
    """Post the question with buttons and wait for the member (timeout: deny)."""
    view = ApprovalView(requester_id, timeout=wait_s)
    message = await channel.send(
        f"<@{requester_id}> {describe(request)}",
        view=view,
        allowed_mentions=discord.AllowedMentions(
            everyone=False, roles=False, users=[discord.Object(id=requester_id)]
        ),
    )
    log.info(
        "run %s: asked member %s to approve %s (up to %gs)",
        request.run_id,
        requester_id,
        request.tool,
        wait_s,
    )
    timed_out = await view.wait()
    if view.decision is not None:
        return view.decision
    if timed_out:
        view.disable_all()
        try:
            await message.edit(
                content=f"{message.content}\n-# No answer in time: denied.",
                view=view,
                allowed_mentions=_NO_PINGS,
            )
        except discord.HTTPException:
            log.info("could not mark the approval as timed out")
    return ApprovalDecision(approved=False, reason="no answer in time")
