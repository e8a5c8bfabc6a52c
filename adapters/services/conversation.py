"""From Discord messages to the model's conversation.

This module knows nothing of Discord: :class:`Turn`, :func:`build_conversation`,
:func:`parse_persona_prefix` and :func:`strip_bot_mention` are what the chat flow and
the console use. :mod:`adapters.discord.history` reads Discord messages into turns.

History is the reply chain or the thread's history, oldest first, kept newest-first
within a message cap and a character cap; when something was left out the result
says so (``cut``), and the answer says so to the member.

Nothing is dropped silently. A file of a message that the model does not get whole
(too large, one too many, a type coterie does not read, a failed download, an image
past the conversation's image count, images to a model that cannot see them) is a
:class:`LeftOut` on its turn: the model reads a short note in that turn ("[attachment
big.txt (5.0 MB) was not read: over the 512 KB limit]", so it does not pretend it read
the file), and :meth:`Conversation.note` tells the member, in the delivery's own words
below the answer, what was left out of the message being answered and why.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from executor.messages import ImagePart, Message, TextPart

__all__ = [
    "STARTER_PATTERN",
    "Conversation",
    "HistoryLimits",
    "LeftOut",
    "Turn",
    "build_conversation",
    "clean_assistant",
    "format_size",
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
    max_attachment_bytes: int = 512 * 1024  # per text attachment, as downloaded
    # Why 3: three files at their character cap fill the history's character cap.
    max_text_files: int = 3  # text attachments read from one message
    # Why 5 MB: the strictest provider's limit on one image (Anthropic's); a larger
    # one would fail the whole request.
    max_image_bytes: int = 5 * 1024 * 1024
    # Why a count: every image costs about 1,600 tokens on every turn it stays in
    # the conversation, and the character cap does not see them. The newest win.
    max_images: int = 10  # images across the conversation


def format_size(n: int) -> str:
    """``5242880`` -> ``"5.0 MB"``, ``524288`` -> ``"512 KB"``, ``900`` -> ``"900 bytes"``."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n} bytes"


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A file of a message that the model did not get whole, and why.

    ``reason`` finishes "was not read: ..." ("over the 512 KB limit"); ``size`` is
    the size Discord stated, when known; ``partly``: its start was read (it was cut
    to the character cap, and the text says where).
    """

    filename: str
    reason: str
    size: int | None = None
    kind: Literal["file", "image"] = "file"
    partly: bool = False

    def _what(self) -> str:
        size = f" ({format_size(self.size)})" if self.size is not None else ""
        if self.partly:
            verb = "was only partly read"
        else:
            verb = "was not shown" if self.kind == "image" else "was not read"
        return f"{self.filename}{size} {verb}: {self.reason}"

    def for_model(self) -> str:
        """The note the model reads in the turn, in place of the file."""
        return f"[{'image' if self.kind == 'image' else 'attachment'} {self._what()}]"

    def for_member(self) -> str:
        """The sentence the member reads below the answer."""
        return self._what() + "."


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
    image_names: tuple[str, ...] = ()  # the images' file names, in order
    left_out: tuple[LeftOut, ...] = ()  # files the model does not get whole

    def size(self) -> int:
        return (
            len(self.content)
            + sum(len(t) + len(n) + 30 for n, t in self.attachments)
            + sum(len(lo.for_model()) + 2 for lo in self.left_out if not lo.partly)
        )

    def image_name(self, i: int) -> str:
        return self.image_names[i] if i < len(self.image_names) else f"image {i + 1}"


@dataclass(slots=True)
class Conversation:
    messages: list[Message] = field(default_factory=list)
    dropped: int = 0  # earlier turns left out by the caps
    truncated: bool = False  # a kept turn was shortened
    left_out: list[LeftOut] = field(default_factory=list)  # of the message answered
    earlier_images_left_out: int = 0  # of earlier messages, past the image count

    @property
    def cut(self) -> bool:
        return self.dropped > 0 or self.truncated

    def notes(self) -> list[str]:
        """What the member should know the model did not read, one sentence each."""
        out: list[str] = []
        if self.dropped:
            kept = len([m for m in self.messages if m.name != _CONTINUED])
            out.append(f"History was cut: only the last {kept} messages were read.")
        elif self.truncated:
            out.append("History was cut: a long message was shortened.")
        out.extend(lo.for_member() for lo in self.left_out)
        if n := self.earlier_images_left_out:
            out.append(
                f"{n} image{'s' if n > 1 else ''} of earlier messages "
                f"{'were' if n > 1 else 'was'} not shown: over the image limit."
            )
        return out

    def note(self) -> str | None:
        """:meth:`notes` as the one line the delivery shows below the answer."""
        return " ".join(self.notes()) or None


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
    for lo in turn.left_out:
        if not lo.partly:  # a cut file says so where it was cut
            body += f"\n\n{lo.for_model()}"
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
    earlier turns are kept newest first while both caps allow, and their images
    newest first up to ``max_images``. A conversation never starts with the
    assistant (providers refuse that): a placeholder user turn leads. What the newest
    turn lost is in :attr:`Conversation.left_out` (and logged).
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
    if see_images:
        kept = _cap_images(kept, lim.max_images, conv)
    kept.reverse()
    if kept and not kept[-1].from_assistant:
        request = kept[-1]
        conv.left_out = list(request.left_out)
        if request.images and not see_images:
            conv.left_out += [
                LeftOut(request.image_name(i), "this model cannot see images", kind="image")
                for i in range(len(request.images))
            ]
        for lo in conv.left_out:
            log.info("left out of the conversation: %s", lo.for_member())
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


def _cap_images(newest_first: list[Turn], max_images: int, conv: Conversation) -> list[Turn]:
    """The turns with at most ``max_images`` images in all, the newest kept; a turn
    that loses images says which (the model reads it), and ``conv`` counts them."""
    room = max_images
    out: list[Turn] = []
    for i, turn in enumerate(newest_first):
        n = len(turn.images)
        if n <= room:
            room -= n
            out.append(turn)
            continue
        dropped = tuple(
            LeftOut(turn.image_name(j), f"over the limit of {max_images} images", kind="image")
            for j in range(room, n)
        )
        out.append(
            replace(
                turn,
                images=turn.images[:room],
                image_names=turn.image_names[:room],
                left_out=turn.left_out + dropped,
            )
        )
        if i > 0:
            conv.earlier_images_left_out += len(dropped)
        room = 0
    return out
