"""From Discord messages to the model's conversation.

This module knows nothing of Discord: :class:`Turn`, :func:`build_conversation`,
:func:`parse_persona_prefix` and :func:`strip_bot_mention` are what the chat flow and
the console use. :mod:`adapters.discord.history` reads Discord messages into turns.

History is the reply chain or the thread's history, oldest first, kept newest-first
within a message cap and a character cap; when something was left out the result
says so (``cut``), and the answer says so to the member.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from executor.messages import ImagePart, Message, TextPart

__all__ = [
    "STARTER_PATTERN",
    "Conversation",
    "HistoryLimits",
    "Turn",
    "build_conversation",
    "clean_assistant",
    "parse_persona_prefix",
    "starter_text",
    "strip_bot_mention",
]

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


def clean_assistant(text: str, persona: str | None) -> str:
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
