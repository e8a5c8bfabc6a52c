"""The sinks: :class:`StreamingDelivery`'s messages as discord.py calls.

:class:`ChannelSink` posts normal messages headed by the persona's name;
:class:`WebhookSink` speaks with the persona's own name and avatar through a channel
webhook, falling back to the channel when a webhook call fails. Every send and edit
carries :func:`~adapters.discord.split.no_pings`. A channel post carries the
delivery's ``nonce`` (Discord returns the first message rather than a second one when
a retried post had landed); a webhook post cannot. ``bucket`` names the Discord
rate-limit bucket a sink's requests go to (see :mod:`adapters.discord.outbox`).
:class:`PendingSink` is one of those two, chosen once the channel's webhook has been
looked up (the first answer in a channel since the start), so that the run need not
wait for that lookup: it overlaps the model's first words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from adapters.discord.split import no_pings

__all__ = ["ChannelSink", "PendingSink", "WebhookSink"]

log = logging.getLogger(__name__)


class ChannelSink:
    """Normal messages in a channel or thread, headed by the persona's name.

    The first message replies to ``reference`` (the member's message) when given;
    that reply is the one mention allowed through.
    """

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        persona: str | None = None,
        reference: discord.Message | None = None,
    ) -> None:
        self.channel = channel
        self.persona = persona
        self.reference = reference

    @property
    def prefix(self) -> str:
        return f"**{self.persona}**\n" if self.persona else ""

    @property
    def bucket(self) -> str:
        # Why one key for posts and edits (two buckets at Discord): the bot's own
        # messages in a channel are few (a fallback, the queue board); one at a time
        # is plenty, and never more than either bucket allows.
        return f"channel:{getattr(self.channel, 'id', id(self.channel))}"

    async def send(self, content: str, *, nonce: int | None = None) -> discord.Message:
        once: dict[str, Any] = {"nonce": nonce} if nonce is not None else {}
        reference = self.reference
        if reference is not None:
            try:
                sent = await self.channel.send(
                    content,
                    reference=reference,
                    mention_author=True,
                    allowed_mentions=no_pings(reply_to_author=True),
                    **once,
                )
            except discord.HTTPException:
                log.info("reply failed (message gone?); sending without a reference", exc_info=True)
            else:
                # Why only now: a try that failed in transit is tried again as a reply.
                self.reference = None
                return sent
            self.reference = None
        return await self.channel.send(content, allowed_mentions=no_pings(), **once)

    async def edit(self, handle: Any, content: str) -> Any:
        msg: discord.Message = handle
        return await msg.edit(content=content, allowed_mentions=no_pings())

    async def delete(self, handle: Any) -> None:
        with contextlib.suppress(discord.HTTPException):
            await handle.delete()

    async def typing(self) -> None:
        await self.channel.typing()

    async def ready(self) -> None:
        return None


class WebhookSink:
    """The persona's own name and avatar through the channel's webhook.

    When a webhook call fails (deleted webhook, lost permission) it continues
    through ``fallback`` for the rest of the run.
    """

    def __init__(
        self,
        webhook: discord.Webhook,
        *,
        username: str,
        avatar_url: str | None,
        fallback: ChannelSink,
        thread: discord.abc.Snowflake | None = None,
        on_gone: Callable[[], None] | None = None,
    ) -> None:
        self.webhook = webhook
        # Called when Discord says the webhook no longer exists (forget the cached one).
        self.on_gone = on_gone
        self.username = username
        self.avatar_url = avatar_url
        self.thread = thread
        self.fallback = fallback
        self.failed = False

    @property
    def prefix(self) -> str:
        return self.fallback.prefix if self.failed else ""

    @property
    def bucket(self) -> str:
        # Posts and edits through one webhook share its bucket at Discord.
        return self.fallback.bucket if self.failed else f"webhook:{self.webhook.id}"

    def _failed(self, exc: discord.HTTPException) -> None:
        self.failed = True
        if isinstance(exc, discord.NotFound) and self.on_gone is not None:
            self.on_gone()

    async def send(self, content: str, *, nonce: int | None = None) -> Any:
        # Why no nonce here: Discord does not deduplicate webhook posts.
        if not self.failed:
            try:
                kwargs: dict[str, Any] = {}
                if self.thread is not None:
                    kwargs["thread"] = self.thread
                if self.avatar_url:
                    kwargs["avatar_url"] = self.avatar_url
                return await self.webhook.send(
                    content,
                    username=self.username,
                    allowed_mentions=no_pings(),
                    wait=True,
                    **kwargs,
                )
            except discord.HTTPException as exc:
                log.warning("webhook send failed; falling back to a normal message", exc_info=True)
                self._failed(exc)
                content = self.fallback.prefix + content
        return await self.fallback.send(content, nonce=nonce)

    async def edit(self, handle: Any, content: str) -> Any:
        if isinstance(handle, discord.WebhookMessage):
            try:
                return await handle.edit(content=content, allowed_mentions=no_pings())
            except discord.HTTPException as exc:
                log.warning("webhook edit failed; continuing in a normal message", exc_info=True)
                self._failed(exc)
                return await self.fallback.send(self.fallback.prefix + content)
        return await self.fallback.edit(handle, content)

    async def delete(self, handle: Any) -> None:
        with contextlib.suppress(discord.HTTPException):
            await handle.delete()

    async def typing(self) -> None:
        await self.fallback.typing()

    async def ready(self) -> None:
        return None


class PendingSink:
    """A :class:`WebhookSink` or a :class:`ChannelSink`, chosen when ``choice`` (a task
    looking up the channel's webhook, already running) is done.

    Its requests wait for the choice (:meth:`ready`, which the delivery awaits before
    it reads ``prefix`` or ``bucket``); its typing indicator does not (it goes to the
    channel either way). A choice that failed is the channel's (``fallback``).
    """

    def __init__(self, choice: Awaitable[ChannelSink | WebhookSink], *, fallback: ChannelSink):
        self._choice = asyncio.ensure_future(choice)
        self._choice.add_done_callback(_retrieved)
        self.fallback = fallback
        self._sink: ChannelSink | WebhookSink | None = None

    @property
    def chosen(self) -> ChannelSink | WebhookSink | None:
        return self._sink

    async def ready(self) -> None:
        if self._sink is None:
            try:
                # Why shielded: another delivery's cancellation must not cancel the
                # lookup a later request of this one still needs.
                self._sink = await asyncio.shield(self._choice)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("could not look up the channel's webhook", exc_info=True)
                self._sink = self.fallback

    def _now(self) -> ChannelSink | WebhookSink:
        # Before the choice (nothing is sent before ready()): the channel's.
        return self._sink if self._sink is not None else self.fallback

    @property
    def prefix(self) -> str:
        return self._now().prefix

    @property
    def bucket(self) -> str:
        return self._now().bucket

    async def send(self, content: str, *, nonce: int | None = None) -> Any:
        await self.ready()
        return await self._now().send(content, nonce=nonce)

    async def edit(self, handle: Any, content: str) -> Any:
        await self.ready()
        return await self._now().edit(handle, content)

    async def delete(self, handle: Any) -> None:
        await self.ready()
        await self._now().delete(handle)

    async def typing(self) -> None:
        await self.fallback.typing()


def _retrieved(task: asyncio.Future[Any]) -> None:
    """The choice may end before anyone awaits it (a run refused before its first
    words): read its outcome so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()
