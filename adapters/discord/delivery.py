"""Assembling the delivery for a persona's answer in a channel, thread or DM."""

from __future__ import annotations

import asyncio
import functools
import logging

import discord

from adapters.discord.approval import ask_with_buttons
from adapters.discord.outbox import Outbox
from adapters.discord.sinks import ChannelSink, PendingSink, WebhookSink
from adapters.discord.streaming import (
    RETRY_DELAYS,
    MessageSink,
    PacerFor,
    PlaceShower,
    StreamingDelivery,
)
from adapters.discord.webhooks import Webhooks
from adapters.services.approval import ApprovalService
from executor.ports import ApprovalDecision, ApprovalRequest, Clock

__all__ = ["open_delivery"]

log = logging.getLogger(__name__)


async def open_delivery(
    target: discord.abc.Messageable,
    *,
    persona: str,
    avatar_url: str | None,
    requester_id: int,
    approvals: ApprovalService,
    webhooks: Webhooks | None = None,
    reference: discord.Message | None = None,
    clock: Clock | None = None,
    interval: float = 1.0,
    retry_delays: tuple[float, ...] = RETRY_DELAYS,
    approval_timeout: float = 120.0,
    outbox: Outbox | None = None,
) -> StreamingDelivery:
    """The delivery for a persona's answer in ``target`` (a channel, thread or DM).

    Through the channel's webhook (the persona's name and avatar) when the bot may
    manage webhooks there; otherwise a normal message headed by the persona's name,
    replying to ``reference``. A channel whose webhook is not known yet (its first
    answer since the start) gets a :class:`~adapters.discord.sinks.PendingSink`: the
    lookup runs beside the run, and only the answer's first request waits for it. With an ``outbox`` (the process's), its requests take
    turns with every other delivery's in the same Discord bucket, and a place in line
    shows on the channel's queue board. A tool call that needs approval asks
    ``requester_id`` with buttons (a question in ``approvals``), waiting up to
    ``approval_timeout``.
    """
    channel_sink = ChannelSink(target, persona=persona, reference=reference)
    sink: MessageSink = channel_sink
    if webhooks is not None:
        hooks = webhooks

        def through(hook: discord.Webhook | None) -> ChannelSink | WebhookSink:
            if hook is None:
                return channel_sink
            hook_channel = hook.channel_id

            def gone() -> None:
                # Why: a deleted webhook stays cached otherwise; the next run makes a new one.
                if hook_channel is not None:
                    hooks.forget(hook_channel)

            return WebhookSink(
                hook,
                username=persona,
                avatar_url=avatar_url,
                fallback=ChannelSink(target, persona=persona),
                thread=target if isinstance(target, discord.Thread) else None,
                on_gone=gone,
            )

        known, hook = webhooks.known(target)
        if known:
            sink = through(hook)
        else:
            # The first answer in this channel since the start: its webhook is looked
            # up (listed, made if need be) while the run goes on, not before it.
            async def choose() -> ChannelSink | WebhookSink:
                try:
                    async with asyncio.timeout(hooks.lookup_timeout_s):
                        hook = await hooks.for_channel(target)
                except TimeoutError:
                    log.warning(
                        "looking up the webhook of %s took over %gs; this answer goes as the bot",
                        target,
                        hooks.lookup_timeout_s,
                    )
                    return channel_sink
                return through(hook)

            sink = PendingSink(choose(), fallback=channel_sink)

    async def ask(request: ApprovalRequest) -> ApprovalDecision:
        return await ask_with_buttons(
            target,
            request,
            requester_id=requester_id,
            approvals=approvals,
            wait_s=approval_timeout,
        )

    pacers: PacerFor | None = None
    show_place: PlaceShower | None = None
    if outbox is not None:
        pacers = outbox.pacer
        board = outbox.board(ChannelSink(target))
        show_place = functools.partial(board.place, object(), requester_id)
    return StreamingDelivery(
        sink,
        clock=clock,
        interval=interval,
        retry_delays=retry_delays,
        ask_approval=ask,
        pacers=pacers,
        show_place=show_place,
    )
