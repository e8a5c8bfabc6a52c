"""Splitting an answer into Discord messages, and the one mention policy.

:func:`split_message` cuts past 2,000 characters at a paragraph, line or word,
closing a code fence at the cut and reopening it in the next piece.
:func:`no_pings`: model output never pings; a reply may still notify the member
who asked (``replied_user``).
"""

from __future__ import annotations

import re

import discord

__all__ = ["DISCORD_LIMIT", "no_pings", "split_message"]

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
