"""From Discord messages to the model's conversation.

The pure part (:class:`Turn`, :func:`build_conversation`, :func:`parse_persona_prefix`,
:func:`strip_bot_mention`) knows nothing of Discord and is what the chat service and
the console use. The Discord part (:func:`turn_from_message`, :func:`reply_chain`,
:func:`thread_history`) reads messages through discord.py and turns them into turns.

History is the reply chain or the thread's history, oldest first, kept newest-first
within a message cap and a character cap; when something was left out the result
says so (``cut``), and the answer says so to the member.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from executor.messages import ImagePart, Message, TextPart

__all__ = [
    "STARTER_PATTERN",
    "Conversation",
    "HistoryLimits",
    "Turn",
    "build_conversation",
    "parse_persona_prefix",
    "reply_chain",
    "starter_text",
    "strip_bot_mention",
    "thread_history",
    "turn_from_message",
]

if TYPE_CHECKING:
    import discord

log = logging.getLogger(__name__)

_PERSONA_PREFIX = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9-]{1,31})\s*:\s*(.*)$", re.DOTALL)
_NOTE_LINE = re.compile(r"^-# ")
STARTER_PATTERN = re.compile(
    r"^\*\*(?P<name>.+?)\*\* asked \*\*(?P<persona>[^*]+)\*\*:\n(?P<prompt>.*)$", re.DOTALL
)


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    max_messages: int = 30
    max_chars: int = 24_000
    attachment_chars: int = 8_000  # per text attachment
    max_attachment_bytes: int = 512_000


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation, host-neutral."""

    author_name: str
    content: str
    from_assistant: bool = False
    author_id: str = ""
    images: tuple[ImagePart, ...] = ()
    attachments: tuple[tuple[str, str], ...] = ()  # (filename, text)
    persona: str | None = None  # on an assistant turn: the persona that spoke

    def size(self) -> int:
        return len(self.content) + sum(len(t) + len(n) + 30 for n, t in self.attachments)


@dataclass(slots=True)
class Conversation:
    messages: list[Message] = field(default_factory=list)
    dropped: int = 0  # earlier turns left out by the caps
    truncated: bool = False  # a kept turn was shortened

    @property
    def cut(self) -> bool:
        return self.dropped > 0 or self.truncated

    def note(self) -> str | None:
        if self.dropped:
            kept = len([m for m in self.messages if m.name != _CONTINUED])
            return f"History was cut: only the last {kept} messages were read."
        if self.truncated:
            return "History was cut: a long message was shortened."
        return None


_CONTINUED = "(continued)"


def strip_bot_mention(text: str, bot_id: int | str | None) -> str:
    """Remove the bot's mention(s) from the start of a message."""
    if bot_id is None:
        return text.strip()
    pattern = re.compile(rf"^\s*(<@!?{bot_id}>\s*)+")
    return pattern.sub("", text).strip()


def parse_persona_prefix(text: str) -> tuple[str | None, str]:
    """``"researcher: find X"`` -> ``("researcher", "find X")``; else ``(None, text)``.

    The caller checks that the name is a persona (else the whole text is the prompt).
    """
    m = _PERSONA_PREFIX.match(text)
    if m is None or not m.group(2).strip():
        return None, text
    return m.group(1).lower(), m.group(2).strip()


def starter_text(display_name: str, persona: str, prompt: str, limit: int = 2000) -> str:
    """The message that opens a ``/chat`` thread; :data:`STARTER_PATTERN` reads it back."""
    head = f"**{display_name}** asked **{persona}**:\n"
    body = prompt if len(head) + len(prompt) <= limit else prompt[: limit - len(head) - 1] + "…"
    return head + body


def _clean_assistant(text: str, persona: str | None) -> str:
    """Our own message back as the assistant's words: no name header, no note lines."""
    if persona and text.startswith(f"**{persona}**\n"):
        text = text[len(persona) + 5 :]
    lines = text.rstrip().split("\n")
    while lines and _NOTE_LINE.match(lines[-1]):
        lines.pop()
    return "\n".join(lines).rstrip()


def _user_message(turn: Turn, *, shared: bool, see_images: bool, text: str) -> Message:
    body = text
    for filename, content in turn.attachments:
        body += f"\n\n[attachment {filename}]\n{content}"
    if turn.images and not see_images:
        body += f"\n\n[{len(turn.images)} image(s) attached; this model cannot see images]"
    parts: list[Any] = [TextPart(text=body or "(no text)")]
    if see_images:
        parts.extend(turn.images)
    return Message(role="user", parts=tuple(parts), name=turn.author_name if shared else None)


def build_conversation(
    turns: Sequence[Turn],
    *,
    limits: HistoryLimits | None = None,
    shared: bool = True,
    see_images: bool = True,
) -> Conversation:
    """Turns (oldest first, the request last) -> messages within the caps.

    The newest turn is always kept (shortened to the character cap if it must be);
    earlier turns are kept newest first while both caps allow. A conversation never
    starts with the assistant (providers refuse that): a placeholder user turn leads.
    """
    lim = limits or HistoryLimits()
    kept: list[Turn] = []
    used = 0
    conv = Conversation()
    for i, turn in enumerate(reversed(turns)):
        size = turn.size()
        if i == 0:
            kept.append(turn)
            used = size
            continue
        if len(kept) >= lim.max_messages or used + size > lim.max_chars:
            conv.dropped = len(turns) - len(kept)
            break
        kept.append(turn)
        used += size
    kept.reverse()
    for turn in kept:
        text = turn.content
        if len(text) > lim.max_chars:
            text = text[: lim.max_chars] + "…"
            conv.truncated = True
        if turn.from_assistant:
            if text:
                conv.messages.append(Message.assistant(text))
        else:
            conv.messages.append(
                _user_message(turn, shared=shared, see_images=see_images, text=text)
            )
    if conv.messages and conv.messages[0].role == "assistant":
        conv.messages.insert(
            0, Message.user("(an earlier part of this conversation)", name=_CONTINUED)
        )
    return conv


# --- discord -------------------------------------------------------------------------
# Why the imports inside the functions: the console and the chat service use the pure
# part above, and should not pay for importing discord.py.

IsOurs = Callable[["discord.Message"], bool]
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
    import discord

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
            content=_clean_assistant(text, persona),
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
                raw = await a.read()
            except (discord.HTTPException, discord.DiscordException):
                log.info("could not read attachment %s", a.filename)
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
    import discord

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
    import discord

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
