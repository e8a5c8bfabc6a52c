"""Approving a tool call: Approve/Deny buttons for the member who asked.

The executor's one approver (:class:`adapters.services.approval.DeliveryApprover`)
hands each request to the run's own delivery; a Discord delivery asks here, with
buttons (:func:`ask_with_buttons`).

The question is a row (:class:`adapters.services.approval.ApprovalService`) and the
buttons are :class:`ApprovalButton`, a ``DynamicItem`` whose ``custom_id`` carries the
question's id: with several processes, Discord sends the press to the process serving
the guild's shard, which need not be the one whose run waits. Whichever receives it
checks who pressed and records the decision on the server side, from the database; the
waiting run hears of it (at once in the same process, else by ``NOTIFY`` or its next
read of the row).

Only the member who asked may press (anyone else is told, privately, that it is not
theirs); the first decision wins (a later press is told what was decided, and by whom);
no answer within the timeout counts as deny.

A question nothing waits for has its buttons greyed, with a line that says why, so
nobody presses a dead one: no answer in time ("No answer in time: denied."); the run
stopped waiting (cancelled, its time limit: ``ENDED``; cut by a restart's drain:
``RESTARTING``, :attr:`ApprovalService.ended_note`); its process died (the
process that settles its runs greys them, :func:`close_question` through
:class:`~adapters.services.resume.ResumeService`: the row says where the question was
posted). Greyed, not removed: Discord sends a press from a client that still showed them
with the message as it is now, and discord.py routes it to :class:`ApprovalButton` only
while the message has the button, so the presser is answered (privately, with what
happened) and nothing is decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any

import discord

from adapters.discord.client import CoterieClient
from adapters.services.approval import ApprovalService
from adapters.services.errors import ApprovalDecided, ApprovalUnavailable, NotYourApproval
from executor.ports import ApprovalDecision, ApprovalRequest

__all__ = ["ApprovalButton", "approval_view", "ask_with_buttons", "close_question", "describe"]

log = logging.getLogger(__name__)

_NO_PINGS = discord.AllowedMentions.none()
_TEMPLATE = r"coterie:approval:(?P<choice>approve|deny):(?P<id>[0-9a-f]{32})"


class ApprovalButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=_TEMPLATE):
    """Approve or Deny one question; only its member's first press counts."""

    def __init__(self, choice: str, approval_id: str, *, disabled: bool = False) -> None:
        approve = choice == "approve"
        super().__init__(
            discord.ui.Button(
                label="Approve" if approve else "Deny",
                style=discord.ButtonStyle.success if approve else discord.ButtonStyle.danger,
                custom_id=f"coterie:approval:{choice}:{approval_id}",
                disabled=disabled,
            )
        )
        self.choice = choice
        self.approval_id = approval_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> ApprovalButton:
        return cls(match["choice"], match["id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        client: CoterieClient[Any] = interaction.client
        approved = self.choice == "approve"
        try:
            await client.approvals.decide(
                self.approval_id,
                user_id=str(interaction.user.id),
                name=interaction.user.display_name,
                approved=approved,
            )
        except ApprovalUnavailable as exc:
            await _refuse(interaction, exc, self.approval_id)
            return
        content = interaction.message.content if interaction.message is not None else ""
        verdict = "Approved" if approved else "Denied"
        await interaction.response.edit_message(
            content=f"{content}\n-# {verdict}."[:2000],
            view=approval_view(self.approval_id, disabled=True),
            allowed_mentions=_NO_PINGS,
        )


async def _refuse(
    interaction: discord.Interaction[Any], exc: ApprovalUnavailable, approval_id: str
) -> None:
    """Tell the presser privately why not, deciding nothing; a question nobody can
    answer any more has its buttons greyed (a client that still showed them was stale;
    one decided already shows its answer and has none to press)."""
    if isinstance(exc, NotYourApproval | ApprovalDecided):
        await interaction.response.send_message(
            str(exc), ephemeral=True, allowed_mentions=_NO_PINGS
        )
        return
    await interaction.response.edit_message(view=approval_view(approval_id, disabled=True))
    await interaction.followup.send(str(exc), ephemeral=True, allowed_mentions=_NO_PINGS)


def approval_view(approval_id: str, *, disabled: bool = False) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ApprovalButton("approve", approval_id, disabled=disabled))
    view.add_item(ApprovalButton("deny", approval_id, disabled=disabled))
    return view


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
    approvals: ApprovalService,
    wait_s: float = 120.0,
) -> ApprovalDecision:
    """Post the question with buttons and wait for the member's press, in whichever
    process it lands (timeout: deny, and the message says so)."""
    approval = await approvals.ask(request, user_id=str(requester_id), timeout_s=wait_s)
    try:
        message = await channel.send(
            f"<@{requester_id}> {describe(request)}",
            view=approval_view(approval.id),
            allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, users=[discord.Object(id=requester_id)]
            ),
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await approvals.withdraw(approval.id)
        raise
    try:
        await approvals.posted(
            approval, channel_id=str(message.channel.id), message_id=str(message.id)
        )
        log.info(
            "run %s: asked member %s to approve %s (up to %gs)",
            request.run_id,
            requester_id,
            request.tool,
            wait_s,
        )
        decided = await approvals.wait(approval)
    except asyncio.CancelledError:
        # The run stopped waiting (cancelled, its time limit, a drain): the question
        # closes and the buttons go (shielded: it is what is left to do).
        with contextlib.suppress(Exception):
            await asyncio.shield(_ended(approvals, approval.id, message))
        raise
    if decided.decision == "expired":
        try:
            await message.edit(
                content=f"{message.content}\n-# No answer in time: denied."[:2000],
                view=approval_view(approval.id, disabled=True),
                allowed_mentions=_NO_PINGS,
            )
        except discord.HTTPException:
            log.info("could not mark the approval as timed out")
    return decided.verdict()


async def _ended(approvals: ApprovalService, approval_id: str, message: discord.Message) -> None:
    row = None
    with contextlib.suppress(Exception):
        row = await approvals.withdraw(approval_id)  # a no-op when the wait closed it
    if row is not None and row.decision in ("approved", "denied"):
        return  # decided just before: the press showed the answer already
    try:
        await _grey(message, approval_id, approvals.ended_note)
    except discord.HTTPException:
        log.info("could not grey the buttons of approval message %s", message.id)


async def close_question(
    client: discord.Client, channel_id: str, message_id: str, approval_id: str, note: str
) -> None:
    """Grey the buttons of a posted question and say why (``note``): another process
    asked it (one that died)."""
    channel: Any = client.get_channel(int(channel_id))
    if channel is None:
        channel = await client.fetch_channel(int(channel_id))
    await _grey(await channel.fetch_message(int(message_id)), approval_id, note)


async def _grey(message: discord.Message, approval_id: str, note: str) -> None:
    await message.edit(
        content=f"{message.content}\n-# {note}"[:2000],
        view=approval_view(approval_id, disabled=True),
        allowed_mentions=_NO_PINGS,
    )
