"""Reading Discord messages into the chat flow's turns.

History is the reply chain, the thread's history or the DM's, oldest first
(:func:`reply_chain`, :func:`thread_history`, :func:`dm_history`); each message becomes
a :class:`~adapters.services.conversation.Turn` (:func:`turn_from_message`), with its
images and the text of its text attachments, read with a hard byte cap. An attachment
that is not passed on (too large, past the count, a type not read, a failed download,
cut to the character cap) becomes a :class:`~adapters.services.conversation.LeftOut` on
the turn, which the model and the member are told about.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Callable

import aiohttp
import discord

from adapters.services.conversation import (
    STARTER_PATTERN,
    HistoryLimits,
    LeftOut,
    Turn,
    clean_assistant,
    format_size,
    strip_bot_mention,
)
from executor.messages import ImagePart

__all__ = [
    "AttachmentTexts",
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


def _type_of(a: discord.Attachment) -> str:
    ctype = (a.content_type or "").split(";")[0].strip()
    if ctype:
        return ctype
    ext = a.filename.rsplit(".", 1)[-1] if "." in a.filename else ""
    return f".{ext} files" if ext else "files of no stated type"


async def _read_text(
    a: discord.Attachment, lim: HistoryLimits
) -> tuple[tuple[str, str] | None, LeftOut | None, bool]:
    """(filename, text) of a text attachment, what the model did not get of it, and
    whether that outcome lasts (a failed download may succeed next time)."""
    over = f"over the {format_size(lim.max_attachment_bytes)} limit"
    if a.size > lim.max_attachment_bytes:
        return None, LeftOut(a.filename, over, a.size), True
    try:
        raw = await read_attachment(a, max_bytes=lim.max_attachment_bytes)
    except discord.DiscordException as exc:
        log.info("could not read attachment %s: %s", a.filename, exc)
        return None, LeftOut(a.filename, "it could not be downloaded", a.size), False
    if raw is None:
        log.info("attachment %s is larger than it said; left out", a.filename)
        return None, LeftOut(a.filename, f"it is larger than it said ({over})"), True
    body = raw.decode("utf-8", errors="replace")
    if len(body) <= lim.attachment_chars:
        return (a.filename, body), None, True
    chars = f"{lim.attachment_chars:,} characters"
    cut = body[: lim.attachment_chars] + f"\n[… cut here: only the first {chars} were read]"
    return (
        (a.filename, cut),
        LeftOut(a.filename, f"only the first {chars} were read", a.size, partly=True),
        True,
    )


_Read = tuple[tuple[str, str] | None, LeftOut | None]


class AttachmentTexts:
    """The text attachments this process has read, by attachment id, most recent kept.

    A conversation's history is read again on every turn (a reply chain, a thread, a
    DM), and with it every text file in it; a Discord attachment never changes (an
    edit can drop a file, not alter it), so each is downloaded once while it stays
    among the ``max_chars`` most recently used characters. Two runs asking for the
    same file at once share one download. A failed download is not kept: the next
    turn tries again.
    """

    def __init__(self, *, max_chars: int = 2_000_000) -> None:
        self.max_chars = max_chars
        self._kept: OrderedDict[tuple[int, int, int], tuple[_Read, int]] = OrderedDict()
        self._chars = 0
        self._reading: dict[tuple[int, int, int], asyncio.Lock] = {}

    async def read(self, a: discord.Attachment, lim: HistoryLimits) -> _Read:
        key = (a.id, lim.max_attachment_bytes, lim.attachment_chars)
        lock = self._reading.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                kept = self._kept.get(key)
                if kept is not None:
                    self._kept.move_to_end(key)
                    return kept[0]
                file, lost, lasts = await _read_text(a, lim)
                if lasts:
                    self._keep(key, (file, lost))
                return file, lost
        finally:
            if not lock.locked() and self._reading.get(key) is lock:
                del self._reading[key]

    def _keep(self, key: tuple[int, int, int], read: _Read) -> None:
        size = len(read[0][1]) if read[0] is not None else 0
        if size > self.max_chars:
            return
        self._kept[key] = (read, size)
        self._chars += size
        while self._chars > self.max_chars:
            _, (_, dropped) = self._kept.popitem(last=False)
            self._chars -= dropped


async def turn_from_message(
    msg: discord.Message,
    *,
    is_ours: IsOurs,
    bot_id: int | None,
    limits: HistoryLimits | None = None,
    content: str | None = None,
    texts: AttachmentTexts | None = None,
) -> Turn:
    """One Discord message as a turn. ``content`` overrides the text (already parsed);
    ``texts``: text attachments already read (None: download each)."""
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
    names: list[str] = []
    files: list[tuple[str, str]] = []
    left: list[LeftOut] = []
    for a in msg.attachments:
        ctype = (a.content_type or "").split(";")[0].strip()
        if ctype.startswith("image/"):
            if a.size > lim.max_image_bytes:
                why = f"over the {format_size(lim.max_image_bytes)} limit for an image"
                left.append(LeftOut(a.filename, why, a.size, kind="image"))
                continue
            images.append(ImagePart(url=a.url, media_type=ctype))
            names.append(a.filename)
        elif not _is_text_attachment(a):
            why = f"coterie reads text files and images, not {_type_of(a)}"
            left.append(LeftOut(a.filename, why, a.size))
        elif len(files) >= lim.max_text_files:
            why = f"over the limit of {lim.max_text_files} text files in one message"
            left.append(LeftOut(a.filename, why, a.size))
        else:
            if texts is not None:
                file, lost = await texts.read(a, lim)
            else:
                file, lost, _ = await _read_text(a, lim)
            if file is not None:
                files.append(file)
            if lost is not None:
                left.append(lost)
    return Turn(
        author_name=msg.author.display_name,
        content=text,
        author_id=str(msg.author.id),
        images=tuple(images),
        attachments=tuple(files),
        image_names=tuple(names),
        left_out=tuple(left),
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
