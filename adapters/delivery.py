"""Streaming a run's answer into Discord messages.

Two layers:

- :class:`StreamingDelivery` implements :class:`executor.ports.Delivery` against a
  small :class:`MessageSink` (send / edit / delete / typing). It owns the timing:
  the first token is posted at once, later edits at most one per ``interval``
  seconds (on an injected clock), the typing indicator until the first token,
  a short status line while tools run, a note at the end when the run was not a
  plain success. Past 2,000 characters it continues in a new message, split by
  :func:`split_message`. It knows nothing of Discord, so it is tested with a fake
  sink and a fake clock.
- The sinks turn that into discord.py calls: :class:`ChannelSink` (a normal
  message headed by the persona's name), :class:`WebhookSink` (the persona's own
  name and avatar through a channel webhook, falling back to the channel when a
  webhook call fails) and :class:`InteractionSink` (slash command followups,
  continuing in channel messages once the 15-minute interaction token is spent).

Model output never pings: every send and edit carries ``AllowedMentions.none()``,
except a reply's reference to the member who asked (``replied_user``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import discord

from executor.agent import RunResult
from executor.ports import ApprovalDecision, ApprovalRequest, Clock, RealClock

__all__ = [
    "DISCORD_LIMIT",
    "ChannelSink",
    "InteractionSink",
    "MessageSink",
    "StreamingDelivery",
    "WebhookSink",
    "Webhooks",
    "no_pings",
    "open_delivery",
    "split_message",
]

log = logging.getLogger(__name__)

DISCORD_LIMIT = 2000
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$")
_CLOSE_RESERVE = 12  # room for a closing fence ("\n" + up to ~10 backticks)


def no_pings(*, reply_to_author: bool = False) -> discord.AllowedMentions:
    """Nothing a model writes may ping; a reply may still notify the member who asked."""
    return discord.AllowedMentions(
        everyone=False, users=False, roles=False, replied_user=reply_to_author
    )


# --- splitting -----------------------------------------------------------------------


def _fence_after(text: str, fence: str | None) -> str | None:
    """The open fence's opening line after ``text`` (None when outside a code block).

    ``fence`` is the opening line in force before ``text``.
    """
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if m is None:
            continue
        marker = m.group(1)
        if fence is None:
            fence = line.strip()
        elif (
            # Why: a fence closes only with the same character, at least as long, bare.
            marker.startswith(_marker(fence)[0])
            and len(marker) >= len(_marker(fence))
            and not m.group(2).strip()
        ):
            fence = None
    return fence


def _marker(opening: str) -> str:
    m = _FENCE.match(opening)
    return m.group(1) if m else "```"


def _cut_point(window: str, fence: str | None) -> int:
    """Where to cut ``window``: a paragraph, else a line, else a space, else hard.

    Prefers a boundary just before a code block opens over one inside it.
    """
    floor = len(window) // 3
    cut = -1
    para = window.rfind("\n\n")
    if para > floor:
        cut = para
    else:
        line = window.rfind("\n")
        if line > floor:
            cut = line
        else:
            space = window.rfind(" ")
            cut = space if space > floor else len(window)
    # Cutting inside a block that opened in this window: cut before its fence instead.
    if fence is None and _fence_after(window[:cut], None) is not None:
        pos = 0
        opened_at = -1
        state: str | None = None
        for text_line in window[:cut].split("\n"):
            before = state
            state = _fence_after(text_line, state)
            if before is None and state is not None:
                opened_at = pos
            pos += len(text_line) + 1
        if opened_at > floor:
            cut = opened_at - 1 if opened_at > 0 else opened_at
    return max(cut, 1)


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` characters.

    Cuts at paragraph boundaries, else line boundaries, else spaces; a code block
    cut in two is closed at the end of one piece and reopened (with its language)
    at the start of the next, so every piece renders on its own.
    """
    if limit < 40:
        raise ValueError("limit must be at least 40 characters")
    pieces: list[str] = []
    rest = text
    fence: str | None = None
    while rest.strip():
        reopen = f"{fence}\n" if fence else ""
        if len(reopen) + len(rest) <= limit and _fence_after(rest, fence) is None:
            pieces.append(reopen + rest)
            break
        window = rest[: limit - len(reopen) - _CLOSE_RESERVE]
        if len(reopen) + len(rest) <= limit - _CLOSE_RESERVE:
            window = rest
            cut = len(rest)
        else:
            cut = _cut_point(window, fence)
        piece = window[:cut].rstrip("\n") if cut < len(rest) else window[:cut]
        after = _fence_after(piece, fence)
        body = reopen + piece
        if after is not None:
            body += "\n" + _marker(after)
        if body.strip():
            pieces.append(body)
        rest = rest[cut:]
        # Drop the boundary itself (one paragraph break or one newline).
        if rest.startswith("\n\n") and after is None:
            rest = rest[2:]
        elif rest.startswith("\n") or (rest.startswith(" ") and after is None):
            rest = rest[1:]
        fence = after
    return pieces


# --- sinks ---------------------------------------------------------------------------


@runtime_checkable
class MessageSink(Protocol):
    """Where :class:`StreamingDelivery` puts messages. ``prefix`` heads the first one."""

    @property
    def prefix(self) -> str: ...

    async def send(self, content: str) -> Any: ...

    async def edit(self, handle: Any, content: str) -> Any:
        """Edit a sent message; returns its (possibly new) handle."""
        ...

    async def delete(self, handle: Any) -> None: ...

    async def typing(self) -> None: ...


ApprovalAsker = Callable[[ApprovalRequest], Awaitable[ApprovalDecision]]


class StreamingDelivery:
    """Streams a run into a :class:`MessageSink` with throttled edits.

    ``interval``: at most one push (send/edit round) per this many seconds after the
    first; ``typing_every``: how often the typing indicator is renewed (Discord shows
    it for about 10 s) until the first token.
    """

    def __init__(
        self,
        sink: MessageSink,
        *,
        clock: Clock | None = None,
        interval: float = 1.0,
        typing_every: float = 8.0,
        limit: int = DISCORD_LIMIT,
        ask_approval: ApprovalAsker | None = None,
    ) -> None:
        self.sink = sink
        self.clock: Clock = clock if clock is not None else RealClock()
        self.interval = interval
        self.typing_every = typing_every
        self.limit = limit
        self._asker = ask_approval
        self.body = ""
        self.status_line: str | None = None
        self.notes: list[str] = []
        self.handles: list[Any] = []
        self.sent: list[str] = []
        self.result: RunResult | None = None
        self.finished = asyncio.Event()
        self._dirty = asyncio.Event()
        self._last_push: float | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._typer: asyncio.Task[None] | None = None
        self._pushing = False
        self._closed = False
        self._push_lock = asyncio.Lock()

    # --- Delivery ------------------------------------------------------------------

    async def start(self) -> None:
        if self.status_line is not None and self.status_line.startswith("waiting"):
            # Was queued: say that it started.
            self.status_line = "working…"
            self._kick()
        if not self.handles and self._typer is None:
            self._typer = asyncio.create_task(self._type(), name="delivery-typing")

    async def text(self, delta: str) -> None:
        if not delta:
            return
        self.body += delta
        self.status_line = None
        self._stop_typing()
        self._kick()

    async def reset(self) -> None:
        self.body = ""
        self._kick()

    async def status(self, line: str) -> None:
        self.status_line = line[:120]
        self._kick()

    async def finish(self, result: RunResult) -> None:
        self.result = result
        self._closed = True
        self._stop_typing()
        await self._stop_flusher()
        self.status_line = None
        note = result.note
        if note and note not in self.notes:
            self.notes.append(note)
        if not self.body.strip() and not self.notes:
            self.notes.append("(no answer)")
        try:
            await self._push()
        finally:
            self.finished.set()

    # --- extras used by the chat service -------------------------------------------

    def note(self, line: str) -> None:
        """A line shown at the end of the answer (e.g. "history was cut")."""
        if line not in self.notes:
            self.notes.append(line)

    async def queued(self, position: int) -> None:
        """The member's request waits in their lane; ``position`` 0 means it started."""
        if position > 0:
            self.status_line = f"waiting in line (position {position})"
        elif self.status_line is not None and self.status_line.startswith("waiting"):
            self.status_line = "working…"
        self._kick()

    async def ask_approval(self, request: ApprovalRequest) -> ApprovalDecision:
        if self._asker is None:
            return ApprovalDecision(approved=False, reason="nobody can be asked here")
        # Show what has been written so far before the question.
        await self._stop_flusher()
        await self._push()
        return await self._asker(request)

    @property
    def text_so_far(self) -> str:
        return self.body

    # --- internals -------------------------------------------------------------------

    def _kick(self) -> None:
        if self._closed:
            return
        self._dirty.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="delivery-flush")

    async def _flush_loop(self) -> None:
        while not self._closed:
            await self._dirty.wait()
            self._dirty.clear()
            if self._last_push is not None:
                wait = self._last_push + self.interval - self.clock.monotonic()
                if wait > 0:
                    await self.clock.sleep(wait)
            if self._closed:
                return
            await self._push()

    async def _stop_flusher(self) -> None:
        task, self._flusher = self._flusher, None
        if task is None or task.done():
            return
        if not self._pushing:
            # Parked (throttle sleep or waiting for text): nothing is in flight.
            task.cancel()
        # Why not cancel a push: a cancelled request may still land, duplicating a message.
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _stop_typing(self) -> None:
        if self._typer is not None:
            self._typer.cancel()
            self._typer = None

    async def _type(self) -> None:
        while True:
            try:
                await self.sink.typing()
            except discord.HTTPException:
                log.debug("typing indicator failed", exc_info=True)
            await self.clock.sleep(self.typing_every)

    def render(self) -> list[str]:
        """The messages as they should read now."""
        text = self.body.rstrip()
        tail: list[str] = []
        if self.status_line:
            tail.append(f"-# {self.status_line}")
        tail.extend(f"-# {n}" for n in self.notes)
        if tail:
            text = f"{text}\n\n" + "\n".join(tail) if text else "\n".join(tail)
        if not text:
            text = "…"
        prefix = self.sink.prefix
        chunks = split_message(text, self.limit - len(prefix))
        chunks[0] = prefix + chunks[0]
        return chunks

    async def _push(self) -> None:
        async with self._push_lock:
            self._pushing = True
            try:
                await self._push_now()
            finally:
                self._pushing = False

    async def _push_now(self) -> None:
        self._stop_typing()
        chunks = self.render()
        for i, content in enumerate(chunks):
            if i < len(self.handles):
                if self.sent[i] != content:
                    self.handles[i] = await self.sink.edit(self.handles[i], content)
                    self.sent[i] = content
            else:
                self.handles.append(await self.sink.send(content))
                self.sent.append(content)
        while len(self.handles) > len(chunks):
            # A failover reset shortened the answer.
            handle = self.handles.pop()
            self.sent.pop()
            await self.sink.delete(handle)
        self._last_push = self.clock.monotonic()


# --- discord sinks --------------------------------------------------------------------


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

    async def send(self, content: str) -> discord.Message:
        reference, self.reference = self.reference, None
        if reference is not None:
            try:
                return await self.channel.send(
                    content,
                    reference=reference,
                    mention_author=True,
                    allowed_mentions=no_pings(reply_to_author=True),
                )
            except discord.HTTPException:
                log.info("reply failed (message gone?); sending without a reference", exc_info=True)
        return await self.channel.send(content, allowed_mentions=no_pings())

    async def edit(self, handle: Any, content: str) -> Any:
        msg: discord.Message = handle
        return await msg.edit(content=content, allowed_mentions=no_pings())

    async def delete(self, handle: Any) -> None:
        with contextlib.suppress(discord.HTTPException):
            await handle.delete()

    async def typing(self) -> None:
        await self.channel.typing()


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

    def _failed(self, exc: discord.HTTPException) -> None:
        self.failed = True
        if isinstance(exc, discord.NotFound) and self.on_gone is not None:
            self.on_gone()

    async def send(self, content: str) -> Any:
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
        return await self.fallback.send(content)

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


class InteractionSink:
    """Slash command followups (the interaction was deferred), then channel messages.

    An interaction token lives 15 minutes; past ``token_ttl`` seconds (or when a
    followup call fails) new messages and edits go to ``fallback`` instead.
    """

    def __init__(
        self,
        interaction: discord.Interaction[Any],
        *,
        fallback: ChannelSink,
        clock: Clock | None = None,
        token_ttl: float = 14 * 60,
        ephemeral: bool = False,
    ) -> None:
        self.interaction = interaction
        self.fallback = fallback
        self.clock: Clock = clock if clock is not None else RealClock()
        self.deadline = self.clock.monotonic() + token_ttl
        self.ephemeral = ephemeral
        self.expired = False

    @property
    def prefix(self) -> str:
        return self.fallback.prefix

    def _alive(self) -> bool:
        if self.clock.monotonic() >= self.deadline:
            self.expired = True
        return not self.expired

    async def send(self, content: str) -> Any:
        if self._alive():
            try:
                return await self.interaction.followup.send(
                    content, allowed_mentions=no_pings(), wait=True, ephemeral=self.ephemeral
                )
            except discord.HTTPException:
                log.info("followup failed; continuing in channel messages", exc_info=True)
                self.expired = True
        return await self.fallback.send(content)

    async def edit(self, handle: Any, content: str) -> Any:
        if isinstance(handle, discord.WebhookMessage):
            if self._alive():
                try:
                    return await handle.edit(content=content, allowed_mentions=no_pings())
                except discord.HTTPException:
                    self.expired = True
            # The token is spent: the rest of this message continues in a new one.
            return await self.fallback.send(content)
        return await self.fallback.edit(handle, content)

    async def delete(self, handle: Any) -> None:
        with contextlib.suppress(discord.HTTPException):
            await handle.delete()

    async def typing(self) -> None:
        # Why: a deferred interaction already shows "thinking…".
        return None


# --- persona webhooks and assembly ----------------------------------------------------

WEBHOOK_NAME = "coterie"


class Webhooks:
    """One webhook per channel, created once and reused; ``None`` where not allowed."""

    def __init__(self) -> None:
        self._by_channel: dict[int, discord.Webhook | None] = {}
        self.ids: set[int] = set()

    def forget(self, channel_id: int) -> None:
        self._by_channel.pop(channel_id, None)

    async def for_channel(self, channel: Any) -> discord.Webhook | None:
        """The webhook of ``channel`` (a thread's parent for a thread) or None."""
        if isinstance(channel, discord.Thread):
            channel = channel.parent
        if not isinstance(channel, discord.TextChannel):
            return None
        if channel.id in self._by_channel:
            return self._by_channel[channel.id]
        if not channel.permissions_for(channel.guild.me).manage_webhooks:
            return None  # not cached: an admin may grant it later
        hook: discord.Webhook | None = None
        try:
            me = channel.guild.me.id
            for existing in await channel.webhooks():
                if existing.user is not None and existing.user.id == me and existing.token:
                    hook = existing
                    break
            if hook is None:
                hook = await channel.create_webhook(name=WEBHOOK_NAME)
        except discord.HTTPException:
            log.warning("cannot use a webhook in #%s; personas speak as the bot", channel)
            hook = None
        self._by_channel[channel.id] = hook
        if hook is not None:
            self.ids.add(hook.id)
        return hook


async def open_delivery(
    target: discord.abc.Messageable,
    *,
    persona: str,
    avatar_url: str | None,
    requester_id: int,
    webhooks: Webhooks | None = None,
    reference: discord.Message | None = None,
    clock: Clock | None = None,
    interval: float = 1.0,
    approval_timeout: float = 120.0,
) -> StreamingDelivery:
    """The delivery for a persona's answer in ``target`` (a channel, thread or DM).

    Through the channel's webhook (the persona's name and avatar) when the bot may
    manage webhooks there; otherwise a normal message headed by the persona's name,
    replying to ``reference``.
    """
    from adapters.approval import ask_with_buttons

    sink: MessageSink = ChannelSink(target, persona=persona, reference=reference)
    hook = await webhooks.for_channel(target) if webhooks is not None else None
    if hook is not None and webhooks is not None:
        hooks = webhooks
        hook_channel = hook.channel_id

        def gone() -> None:
            # Why: a deleted webhook stays cached otherwise; the next run makes a new one.
            if hook_channel is not None:
                hooks.forget(hook_channel)

        sink = WebhookSink(
            hook,
            username=persona,
            avatar_url=avatar_url,
            fallback=ChannelSink(target, persona=persona),
            thread=target if isinstance(target, discord.Thread) else None,
            on_gone=gone,
        )

    async def ask(request: ApprovalRequest) -> ApprovalDecision:
        return await ask_with_buttons(
            target, request, requester_id=requester_id, wait_s=approval_timeout
        )

    return StreamingDelivery(sink, clock=clock, interval=interval, ask_approval=ask)
