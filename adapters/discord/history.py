"""Reading Discord messages into the chat flow's turns.

History is the reply chain, the thread's history or the DM's, oldest first
(:func:`reply_chain`, :func:`thread_history`, :func:`dm_history`); each message becomes
a :class:`~adapters.services.conversation.Turn` (:func:`turn_from_message`), with its
images and the text of its text attachments, read with a hard byte cap.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import aiohttp
import discord

from adapters.services.conversation import (
    STARTER_PATTERN,
    HistoryLimits,
    Turn,
    clean_assistant,
    strip_bot_mention,
)
from executor.messages import ImagePart

__all__ = [
    "IsOurs",
    "dm_history",
    "read_attachment",
    "reply_chain",
    "thread_history",
    "turn_from_message",
]

log = logging.getLogger(__name__)


_CHUNK = 64 * 1024
_READ_TIMEOUT_S = 30.0


async def read_attachment(attachment: discord.Attachment, *, max_bytes: int) -> bytes | None:
    """The attachment's bytes, or None when it is larger than ``max_bytes``.

    Why not ``Attachment.read()``: it reads whatever the server sends, whatever size
    Discord stated (an attachment that claimed 10 bytes sent 300 MB here). This
    streams and stops one chunk past the cap. Raises ``discord.HTTPException``-like
    errors as :class:`discord.DiscordException` for the caller to report.
    """
    if attachment.size > max_bytes:
        return None
    timeout = aiohttp.ClientTimeout(total=_READ_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(attachment.url) as response,
        ):
            if response.status != 200:
                raise discord.DiscordException(f"HTTP {response.status}")
            if (response.content_length or 0) > max_bytes:
                return None
            data = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                data.extend(chunk)
                if len(data) > max_bytes:
                    return None
            return bytes(data)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise discord.DiscordException(f"could not download: {type(exc).__name__}") from exc


IsOurs = Callable[[discord.Message], bool]
"""True for a message the bot wrote (its own user or one of its persona webhooks)."""


def _is_text_attachment(a: discord.Attachment) -> bool:
    ctype = (a.content_type or "").split(";")[0].strip()
    if ctype.startswith("text/") or ctype in ("application/json", "application/xml"):
        return True
    return a.filename.rsplit(".", 1)[-1].lower() in {"txt", "md", "py", "json", "csv", "log"}


async def turn_from_message(
    msg: discord.Message,
    *,
    is_ours: IsOurs,
    bot_id: int | None,
    limits: HistoryLimits | None = None,
    content: str | None = None,
) -> Turn:
    """One Discord message as a turn. ``content`` overrides the text (already parsed)."""
    lim = limits or HistoryLimits()
    if is_ours(msg):
        persona = msg.author.name if msg.webhook_id else None
        text = msg.content
        m = STARTER_PATTERN.match(text)
        if m is not None:
            return Turn(author_name=m.group("name"), content=m.group("prompt"))
        if persona is None:
            header = re.match(r"^\*\*([^*\n]+)\*\*\n", text)
            persona = header.group(1) if header else None
        return Turn(
            author_name=msg.author.display_name,
            content=clean_assistant(text, persona),
            from_assistant=True,
            author_id=str(msg.author.id),
            persona=persona,
        )
    text = content if content is not None else strip_bot_mention(msg.content, bot_id)
    images: list[ImagePart] = []
    files: list[tuple[str, str]] = []
    for a in msg.attachments:
        ctype = (a.content_type or "").split(";")[0].strip()
        if ctype.startswith("image/"):
            images.append(ImagePart(url=a.url, media_type=ctype))
        elif _is_text_attachment(a) and a.size <= lim.max_attachment_bytes:
            try:
                raw = await read_attachment(a, max_bytes=lim.max_attachment_bytes)
            except discord.DiscordException:
                log.info("could not read attachment %s", a.filename)
                continue
            if raw is None:
                log.info("attachment %s is larger than it said; left out", a.filename)
                continue
            body = raw.decode("utf-8", errors="replace")
            if len(body) > lim.attachment_chars:
                body = body[: lim.attachment_chars] + "\n[… attachment cut]"
            files.append((a.filename, body))
    return Turn(
        author_name=msg.author.display_name,
        content=text,
        author_id=str(msg.author.id),
        images=tuple(images),
        attachments=tuple(files),
    )


async def reply_chain(msg: discord.Message, *, max_messages: int) -> list[discord.Message]:
    """The messages ``msg`` replies to, oldest first, ``msg`` last (at most ``max_messages``)."""
    chain = [msg]
    current = msg
    while len(chain) < max_messages + 1 and current.reference is not None:
        ref = current.reference
        parent: discord.Message | None = None
        if isinstance(ref.resolved, discord.Message):
            parent = ref.resolved
        elif ref.message_id is not None:
            try:
                parent = await current.channel.fetch_message(ref.message_id)
            except discord.HTTPException:
                parent = None
        if parent is None:
            break
        chain.append(parent)
        current = parent
    chain.reverse()
    return chain


async def thread_history(
    thread: discord.Thread, msg: discord.Message | None, *, max_messages: int
) -> list[discord.Message]:
    """The thread's messages before ``msg`` (and ``msg``), oldest first.

    When the whole thread fits, the message it was started from (a ``/chat``
    starter in the parent channel) leads.
    """
    before = [m async for m in thread.history(limit=max_messages + 1, before=msg)]
    before.reverse()
    out = before + ([msg] if msg is not None else [])
    if len(before) <= max_messages and thread.parent is not None:
        parent = thread.parent
        if isinstance(parent, discord.TextChannel):
            try:
                starter = await parent.fetch_message(thread.id)
            except discord.HTTPException:
                starter = None
            if starter is not None:
                out.insert(0, starter)
    return out


async def dm_history(
    channel: discord.DMChannel, msg: discord.Message, *, max_messages: int
) -> list[discord.Message]:
    """The DM's last messages before ``msg``, and ``msg``, oldest first."""
    before = [m async for m in channel.history(limit=max_messages + 1, before=msg)]
    before.reverse()
    return [*before, msg]
