"""Notes without SQL: what a note is, its scope, the store's contract, and the in-memory
store.

Scopes (the whole point): a note belongs to one member (``user_id``), one persona and
one place (``"guild:<id>"`` or ``"dm"``). Every read names the member and the place, so
nothing crosses members or places; the persona filter is dropped only when a guild lets
its personas share what they know about a member *in that guild*
(:attr:`Scope.persona` ``None``). Lore (``kind="lore"``) is an admin's text about the
server for one persona, read by every member's conversation there and never mixed with
members' notes.

Two stores keep one contract (``tests/memory`` runs it on memory, SQLite and
PostgreSQL): :class:`InMemoryNoteStore` here (the kernel's tests, the console) and
:class:`memory.store.SqlNoteStore`. Why this module imports no SQL: the services
(``adapters/services``) read notes through the contract and may not import SQLAlchemy.

Search ranks by relevance, then recency. A query is reduced to its words, so nothing a
member types is FTS or tsquery syntax.
"""

from __future__ import annotations

import builtins as _builtins
import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from executor.ports import Clock, RealClock
from memory.errors import MemoryFull, NoteNotFound

__all__ = [
    "NOTE_MAX_CHARS",
    "Caps",
    "InMemoryNoteStore",
    "Note",
    "NoteStore",
    "PromptNotes",
    "Scope",
    "place_of",
    "query_words",
    "rank_matches",
    "scope_tokens",
]

NOTE_MAX_CHARS = 500
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_WORDS = 32
# What a prompt's selection reads of one scope, newest first (the caps keep a member's
# notes in one scope under this: 50 a persona by default).
MAX_PROMPT_CANDIDATES = 300


def place_of(guild_id: str | None) -> str:
    """The place a conversation happens in: a guild, or the member's DMs."""
    return f"guild:{guild_id}" if guild_id else "dm"


def scope_tokens(user_id: str, place: str, persona: str) -> str:
    """The note's scope as two search tokens: member+place, member+place+persona."""
    member = hashlib.sha256(f"{user_id}\x00{place}".encode()).hexdigest()[:16]
    persona_key = hashlib.sha256(f"{user_id}\x00{place}\x00{persona}".encode()).hexdigest()[:16]
    return f"m{member} p{persona_key}"


def _fold(text: str) -> str:
    """Lower-cased, without diacritics ("Café" -> "cafe"), like FTS5's tokenizer here."""
    text = text.lower()
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def query_words(query: str) -> list[str]:
    """The words of ``query``, folded, once each, at most 32 (no search syntax)."""
    words = [w for w in _WORD.findall(_fold(query)) if len(w) > 1 or w.isdigit()]
    return list(dict.fromkeys(words))[:MAX_QUERY_WORDS]


def rank_matches(notes: Iterable[Note], query: str, limit: int) -> list[Note]:
    """The notes that share words with ``query``: those sharing the most first, then
    the newest. How every store orders a member's few notes for a prompt."""
    words = set(query_words(query))
    if not words or limit <= 0:
        return []
    scored = [(len(words & set(query_words(n.text))), n.created_at, n.id, n) for n in notes]
    hits = sorted((s for s in scored if s[0] > 0), key=lambda s: s[:3], reverse=True)
    return [s[3] for s in hits[:limit]]


@dataclass(frozen=True, slots=True)
class Note:
    id: int
    kind: str
    user_id: str
    persona: str
    place: str
    text: str
    created_at: datetime
    created_by: str = ""
    run_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose notes, kept by which persona (None: every persona of the place), where."""

    user_id: str
    persona: str | None
    place: str


@dataclass(frozen=True, slots=True)
class Caps:
    """What one member may have one persona keep in one place."""

    max_notes: int = 50
    max_chars: int = 10_000


@dataclass(frozen=True, slots=True)
class PromptNotes:
    """What a prompt may use, read at once (:meth:`NoteStore.for_prompt`): the member's
    newest notes, the best matches for the message, the persona's lore, and whether the
    member turned memory off (then both note lists are empty).

    Why the matches are ranked in Python here and not by the full-text index: the caps
    keep one scope's notes few, so they are read with the newest (the scope index, one
    statement) and ranked by :func:`rank_matches` in microseconds, where the index pays
    for every row holding a common word ("my", "is") across all members' notes; the
    index serves :meth:`NoteStore.search` (the ``recall`` tool)."""

    newest: tuple[Note, ...] = ()
    matches: tuple[Note, ...] = ()
    lore: tuple[Note, ...] = ()
    off: bool = False


class NoteStore(Protocol):
    """What memory keeps. Every method names the member (or, for lore, the place)."""

    async def add(
        self, scope: Scope, text: str, *, caps: Caps, run_id: str = "", created_by: str = ""
    ) -> Note: ...
    async def add_lore(self, place: str, persona: str, text: str, *, by: str) -> Note: ...
    async def get(self, user_id: str, note_id: int) -> Note: ...
    async def list(
        self,
        user_id: str,
        *,
        persona: str | None = None,
        place: str | None = None,
        run_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> _builtins.list[Note]: ...
    async def count(
        self, user_id: str, *, persona: str | None = None, place: str | None = None
    ) -> int: ...
    async def delete(self, user_id: str, note_id: int) -> Note: ...
    async def delete_all(
        self, user_id: str, *, persona: str | None = None, place: str | None = None
    ) -> int: ...
    async def newest(self, scope: Scope, limit: int) -> _builtins.list[Note]: ...
    async def search(self, scope: Scope, query: str, limit: int) -> _builtins.list[Note]: ...
    async def for_prompt(
        self, scope: Scope, query: str, *, newest: int, matches: int, lore_persona: str | None
    ) -> PromptNotes: ...
    async def lore(self, place: str, persona: str) -> _builtins.list[Note]: ...
    async def all_lore(self, place: str) -> _builtins.list[Note]: ...
    async def delete_lore(self, place: str, note_id: int) -> Note: ...
    async def counts_by_member(self, place: str) -> dict[str, int]: ...
    async def purge_older_than(self, cutoff: datetime) -> int: ...
    async def is_off(self, user_id: str) -> bool: ...
    async def set_off(self, user_id: str, off: bool) -> None: ...
    async def delete_user_data(self, user_id: str) -> int: ...
    async def export_user_data(self, user_id: str) -> dict[str, Any]: ...


def full_reason(caps: Caps, count: int, chars: int, text: str) -> str | None:
    """Why one more note of ``text`` passes ``caps`` (None: it fits)."""
    if count >= caps.max_notes:
        return (
            f"this member already has {count} notes with this persona here (the most kept); "
            "forget an old one first (forget_note) or ask them to with /memory forget"
        )
    if chars + len(text) > caps.max_chars:
        return (
            f"this member's notes with this persona here would pass {caps.max_chars} "
            "characters; forget an old one first"
        )
    return None


def _newest_first(notes: Any) -> _builtins.list[Note]:
    return sorted(notes, key=lambda n: (n.created_at, n.id), reverse=True)


class InMemoryNoteStore:
    """The contract in a dict; search counts shared words (relevance), then recency."""

    data_name = "memory notes"

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._notes: dict[int, Note] = {}
        self._off: dict[str, datetime] = {}
        self._next = 1
        self._clock = clock or RealClock()

    def _members(self, scope: Scope) -> _builtins.list[Note]:
        return [
            n
            for n in self._notes.values()
            if n.kind == "note"
            and n.user_id == scope.user_id
            and n.place == scope.place
            and (scope.persona is None or n.persona == scope.persona)
        ]

    def _new(self, **fields: Any) -> Note:
        note = Note(id=self._next, created_at=self._clock.now(), **fields)
        self._notes[note.id] = note
        self._next += 1
        return note

    async def add(
        self, scope: Scope, text: str, *, caps: Caps, run_id: str = "", created_by: str = ""
    ) -> Note:
        persona = scope.persona or ""
        mine = self._members(Scope(scope.user_id, persona, scope.place))
        problem = full_reason(caps, len(mine), sum(len(n.text) for n in mine), text)
        if problem:
            raise MemoryFull(problem)
        return self._new(
            kind="note",
            user_id=scope.user_id,
            persona=persona,
            place=scope.place,
            text=text,
            created_by=created_by or scope.user_id,
            run_id=run_id,
        )

    async def add_lore(self, place: str, persona: str, text: str, *, by: str) -> Note:
        return self._new(
            kind="lore", user_id="", persona=persona, place=place, text=text, created_by=by
        )

    def _selected(
        self,
        user_id: str,
        persona: str | None,
        place: str | None,
        run_id: str | None = None,
    ) -> _builtins.list[Note]:
        return _newest_first(
            n
            for n in self._notes.values()
            if n.kind == "note"
            and n.user_id == user_id
            and (persona is None or n.persona == persona)
            and (place is None or n.place == place)
            and (run_id is None or n.run_id == run_id)
        )

    async def get(self, user_id: str, note_id: int) -> Note:
        note = self._notes.get(note_id)
        if note is None or note.kind != "note" or note.user_id != user_id:
            raise NoteNotFound(f"there is no note #{note_id} of yours")
        return note

    async def list(
        self,
        user_id: str,
        *,
        persona: str | None = None,
        place: str | None = None,
        run_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> _builtins.list[Note]:
        return self._selected(user_id, persona, place, run_id)[offset : offset + limit]

    async def count(
        self, user_id: str, *, persona: str | None = None, place: str | None = None
    ) -> int:
        return len(self._selected(user_id, persona, place))

    async def delete(self, user_id: str, note_id: int) -> Note:
        note = await self.get(user_id, note_id)
        del self._notes[note.id]
        return note

    async def delete_all(
        self, user_id: str, *, persona: str | None = None, place: str | None = None
    ) -> int:
        gone = self._selected(user_id, persona, place)
        for n in gone:
            del self._notes[n.id]
        return len(gone)

    async def newest(self, scope: Scope, limit: int) -> _builtins.list[Note]:
        return _newest_first(self._members(scope))[:limit]

    async def search(self, scope: Scope, query: str, limit: int) -> _builtins.list[Note]:
        return rank_matches(self._members(scope), query, limit)

    async def for_prompt(
        self, scope: Scope, query: str, *, newest: int, matches: int, lore_persona: str | None
    ) -> PromptNotes:
        lore = (
            tuple(await self.lore(scope.place, lore_persona))
            if lore_persona is not None and scope.place != "dm"
            else ()
        )
        if newest <= 0 and matches <= 0:
            return PromptNotes(lore=lore)
        if scope.user_id in self._off:
            return PromptNotes(lore=lore, off=True)
        mine = _newest_first(self._members(scope))[:MAX_PROMPT_CANDIDATES]
        return PromptNotes(
            newest=tuple(mine[:newest]),
            matches=tuple(rank_matches(mine, query, matches)),
            lore=lore,
        )

    async def lore(self, place: str, persona: str) -> _builtins.list[Note]:
        return [n for n in await self.all_lore(place) if n.persona == persona]

    async def all_lore(self, place: str) -> _builtins.list[Note]:
        return sorted(
            (n for n in self._notes.values() if n.kind == "lore" and n.place == place),
            key=lambda n: n.id,
        )

    async def delete_lore(self, place: str, note_id: int) -> Note:
        note = self._notes.get(note_id)
        if note is None or note.kind != "lore" or note.place != place:
            raise NoteNotFound(f"there is no lore #{note_id} in this server")
        del self._notes[note_id]
        return note

    async def counts_by_member(self, place: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self._notes.values():
            if n.kind == "note" and n.place == place:
                counts[n.user_id] = counts.get(n.user_id, 0) + 1
        return counts

    async def purge_older_than(self, cutoff: datetime) -> int:
        old = [i for i, n in self._notes.items() if n.kind == "note" and n.created_at < cutoff]
        for i in old:
            del self._notes[i]
        return len(old)

    async def is_off(self, user_id: str) -> bool:
        return user_id in self._off

    async def set_off(self, user_id: str, off: bool) -> None:
        if off:
            self._off.setdefault(user_id, self._clock.now())
        else:
            self._off.pop(user_id, None)

    async def delete_user_data(self, user_id: str) -> int:
        gone = await self.delete_all(user_id)
        self._off.pop(user_id, None)
        # Lore an admin wrote stays (it is about the server), without their name.
        for i, n in _builtins.list(self._notes.items()):
            if n.kind == "lore" and n.created_by == user_id:
                self._notes[i] = Note(**{**asdict(n), "created_by": ""})
        return gone

    async def export_user_data(self, user_id: str) -> dict[str, Any]:
        since = self._off.get(user_id)
        return {
            "notes": [n.as_dict() for n in self._selected(user_id, None, None)],
            "memory_off": since is not None,
            "memory_off_since": since.isoformat() if since is not None else None,
            "lore_written": [
                n.as_dict()
                for n in self._notes.values()
                if n.kind == "lore" and n.created_by == user_id
            ],
        }
