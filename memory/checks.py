"""Checks before a note is kept: it is what a later prompt will say about a member.

A note is a short fact in the member's words, not instructions to a model and not a
secret. :func:`clean_note` strips invisible characters, collapses whitespace, caps the
length, and refuses (with a reason the model reads) what looks like a secret (the
redaction patterns) or like instructions (prompt-injection phrases, tool-call or chat
template syntax), so that what one conversation saves cannot steer the next.
"""

from __future__ import annotations

import re
import unicodedata

from executor.redaction import scrub
from memory.errors import NoteRefused
from memory.notes import NOTE_MAX_CHARS

__all__ = ["clean_note", "looks_like_instructions"]

_INSTRUCTIONS = re.compile(
    r"(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)?"
    r"(?:previous|prior|above|earlier|system|these|those)?\s*(?:instructions|rules|prompts?)"
    r"|\bsystem\s+prompt\b"
    r"|\byou\s+(?:are|will)\s+now\b"
    r"|\bfrom\s+now\s+on\s+(?:you|always|never)\b"
    r"|\bnew\s+instructions\b"
    r"|\bdeveloper\s+mode\b"
    r"|\bjailbreak"
    r"|<\s*/?\s*(?:system|tool|function|assistant|user|instructions?|im_start|im_end)\b"
    r"|<\|[a-z_]+\|>"
    r"|\[/?INST\]"
    r"|\b(?:tool_use|tool_call|function_call|tool_result)\b"
    r"|\"(?:name|arguments|tool)\"\s*:",
    re.IGNORECASE,
)


def looks_like_instructions(text: str) -> bool:
    return bool(_INSTRUCTIONS.search(text))


def _visible(text: str) -> str:
    """Without format characters (zero-width spaces, joiners, bidi overrides, tags)."""
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cf" or (category == "Cc" and ch not in "\n\t"):
            continue
        kept.append(ch)
    return "".join(kept)


def clean_note(text: str, *, max_chars: int = NOTE_MAX_CHARS) -> str:
    """The note as it will be kept, or :class:`NoteRefused` with the reason."""
    cleaned = " ".join(_visible(unicodedata.normalize("NFKC", text)).split())
    if not cleaned:
        raise NoteRefused("the note is empty")
    if len(cleaned) > max_chars:
        raise NoteRefused(
            f"the note is {len(cleaned)} characters; keep it under {max_chars} "
            "(one short fact per note)"
        )
    if scrub(cleaned) != cleaned:
        raise NoteRefused("the note looks like it holds a secret (a key or token): not kept")
    if looks_like_instructions(cleaned):
        raise NoteRefused(
            "the note reads as instructions to a model, not a fact about the member: not kept"
        )
    return cleaned
