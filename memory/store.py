"""Notes: kept per member, persona and place; searched with the database's own full-text.

Scopes (the whole point): a note belongs to one member (``user_id``), one persona and
one place (``"guild:<id>"`` or ``"dm"``). Every read names the member and the place, so
nothing crosses members or places; the persona filter is dropped only when a guild lets
its personas share what they know about a member *in that guild*
(:attr:`Scope.persona` ``None``). Lore (``kind="lore"``) is an admin's text about the
server for one persona, read by every member's conversation there and never mixed with
members' notes.

Two stores with one contract (``tests/memory`` runs it on memory, SQLite and PostgreSQL):

- :class:`InMemoryNoteStore`: the default for the kernel's tests and the console.
- :class:`SqlNoteStore`: SQLite FTS5 (an external-content table kept by triggers, ranked
  by ``bm25``) or PostgreSQL (a generated ``tsvector`` with a GIN index, ranked by
  ``ts_rank``), both made by the migration. The text search configuration is
  ``simple`` on PostgreSQL (no stemming, any language), like FTS5's default tokenizer.

Search ranks by relevance, then recency. A query is reduced to its words, so nothing a
member types is FTS or tsquery syntax.
"""

from __future__ import annotations

import builtins as _builtins
import hashlib
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from executor.ports import utcnow
from memory.errors import MemoryFull, NoteNotFound
from memory.tables import MemoryOptOut, NoteRow

__all__ = [
    "Caps",
    "InMemoryNoteStore",
    "Note",
    "NoteStore",
    "Scope",
    "SqlNoteStore",
    "place_of",
    "query_words",
    "scope_tokens",
]

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_WORDS = 32


def place_of(guild_id: str | None) -> str:
    """The place a conversation happens in: a guild, or the member's DMs."""
    return f"guild:{guild_id}" if guild_id else "dm"


def scope_tokens(user_id: str, place: str, persona: str) -> str:
    """The note's scope as two search tokens: member+place, member+place+persona."""
    member = hashlib.sha256(f"{user_id}\x00{place}".encode()).hexdigest()[:16]
    persona_key = hashlib.sha256(f"{user_id}\x00{place}\x00{persona}".encode()).hexdigest()[:16]
    return f"m{member} p{persona_key}"


def _scope_token(scope: Scope) -> str:
    member, persona = scope_tokens(scope.user_id, scope.place, scope.persona or "").split()
    return member if scope.persona is None else persona


def query_words(query: str) -> list[str]:
    """The words of ``query``, lower-cased, once each, at most 32 (no search syntax)."""
    words = [w.lower() for w in _WORD.findall(query) if len(w) > 1 or w.isdigit()]
    return list(dict.fromkeys(words))[:MAX_QUERY_WORDS]


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
    async def lore(self, place: str, persona: str) -> _builtins.list[Note]: ...
    async def delete_lore(self, place: str, note_id: int) -> Note: ...
    async def counts_by_member(self, place: str) -> dict[str, int]: ...
    async def purge_older_than(self, cutoff: datetime) -> int: ...
    async def is_off(self, user_id: str) -> bool: ...
    async def set_off(self, user_id: str, off: bool) -> None: ...
    async def delete_user_data(self, user_id: str) -> int: ...
    async def export_user_data(self, user_id: str) -> dict[str, Any]: ...


def _full(caps: Caps, count: int, chars: int, text: str) -> str | None:
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


def _note(row: NoteRow) -> Note:
    assert row.id is not None
    return Note(
        id=row.id,
        kind=row.kind,
        user_id=row.user_id,
        persona=row.persona,
        place=row.place,
        text=row.text,
        created_at=row.created_at,
        created_by=row.created_by,
        run_id=row.run_id,
    )


# --- in memory ------------------------------------------------------------------------


class InMemoryNoteStore:
    """The contract in a dict; search counts shared words (relevance), then recency."""

    def __init__(self) -> None:
        self._notes: dict[int, Note] = {}
        self._off: set[str] = set()
        self._next = 1

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
        note = Note(id=self._next, created_at=utcnow(), **fields)
        self._notes[note.id] = note
        self._next += 1
        return note

    async def add(
        self, scope: Scope, text: str, *, caps: Caps, run_id: str = "", created_by: str = ""
    ) -> Note:
        persona = scope.persona or ""
        mine = self._members(Scope(scope.user_id, persona, scope.place))
        problem = _full(caps, len(mine), sum(len(n.text) for n in mine), text)
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
        self, user_id: str, persona: str | None, place: str | None
    ) -> _builtins.list[Note]:
        return sorted(
            (
                n
                for n in self._notes.values()
                if n.kind == "note"
                and n.user_id == user_id
                and (persona is None or n.persona == persona)
                and (place is None or n.place == place)
            ),
            key=lambda n: (n.created_at, n.id),
            reverse=True,
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
        limit: int = 50,
        offset: int = 0,
    ) -> _builtins.list[Note]:
        return self._selected(user_id, persona, place)[offset : offset + limit]

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
        return sorted(self._members(scope), key=lambda n: (n.created_at, n.id), reverse=True)[
            :limit
        ]

    async def search(self, scope: Scope, query: str, limit: int) -> _builtins.list[Note]:
        words = set(query_words(query))
        if not words:
            return []
        scored = [
            (len(words & set(query_words(n.text))), n.created_at, n.id, n)
            for n in self._members(scope)
        ]
        hits = sorted((s for s in scored if s[0] > 0), key=lambda s: s[:3], reverse=True)
        return [s[3] for s in hits[:limit]]

    async def lore(self, place: str, persona: str) -> _builtins.list[Note]:
        return sorted(
            (
                n
                for n in self._notes.values()
                if n.kind == "lore" and n.place == place and n.persona == persona
            ),
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
        (self._off.add if off else self._off.discard)(user_id)

    async def delete_user_data(self, user_id: str) -> int:
        gone = await self.delete_all(user_id)
        self._off.discard(user_id)
        # Lore an admin wrote stays (it is about the server), without their name.
        for i, n in _builtins.list(self._notes.items()):
            if n.kind == "lore" and n.created_by == user_id:
                self._notes[i] = Note(**{**asdict(n), "created_by": ""})
        return gone

    async def export_user_data(self, user_id: str) -> dict[str, Any]:
        return {
            "notes": [n.as_dict() for n in self._selected(user_id, None, None)],
            "memory_off": user_id in self._off,
        }


# --- SQL --------------------------------------------------------------------------------


class SqlNoteStore:
    """Notes in the database; full-text search by SQLite FTS5 or PostgreSQL tsvector."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    def _dialect(self, session: AsyncSession) -> str:
        return session.get_bind().dialect.name

    @staticmethod
    def _where_scope(scope: Scope) -> list[Any]:
        where = [
            col(NoteRow.kind) == "note",
            col(NoteRow.user_id) == scope.user_id,
            col(NoteRow.place) == scope.place,
        ]
        if scope.persona is not None:
            where.append(col(NoteRow.persona) == scope.persona)
        return where

    @staticmethod
    def _where_member(user_id: str, persona: str | None, place: str | None) -> list[Any]:
        where = [col(NoteRow.kind) == "note", col(NoteRow.user_id) == user_id]
        if persona is not None:
            where.append(col(NoteRow.persona) == persona)
        if place is not None:
            where.append(col(NoteRow.place) == place)
        return where

    async def add(
        self, scope: Scope, text: str, *, caps: Caps, run_id: str = "", created_by: str = ""
    ) -> Note:
        persona = scope.persona or ""
        async with self._sessions() as session:
            where = self._where_scope(Scope(scope.user_id, persona, scope.place))
            count, chars = (
                await session.execute(
                    select(func.count(), func.coalesce(func.sum(func.length(NoteRow.text)), 0))
                    .select_from(NoteRow)
                    .where(*where)
                )
            ).one()
            # Why not locked: two saves racing past the check overshoot the cap by one
            # note, which the next save's check sees; no lock is worth that.
            problem = _full(caps, int(count), int(chars), text)
            if problem:
                raise MemoryFull(problem)
            row = NoteRow(
                kind="note",
                user_id=scope.user_id,
                persona=persona,
                place=scope.place,
                text=text,
                created_by=created_by or scope.user_id,
                run_id=run_id,
                scope=scope_tokens(scope.user_id, scope.place, persona),
            )
            session.add(row)
            await session.commit()
            await session.refresh(row)
            return _note(row)

    async def add_lore(self, place: str, persona: str, text: str, *, by: str) -> Note:
        async with self._sessions() as session:
            row = NoteRow(
                kind="lore", user_id="", persona=persona, place=place, text=text, created_by=by
            )
            session.add(row)
            await session.commit()
            await session.refresh(row)
            return _note(row)

    async def get(self, user_id: str, note_id: int) -> Note:
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(NoteRow).where(
                        col(NoteRow.id) == note_id, *self._where_member(user_id, None, None)
                    )
                )
            ).scalar_one_or_none()
        if row is None:
            raise NoteNotFound(f"there is no note #{note_id} of yours")
        return _note(row)

    async def list(
        self,
        user_id: str,
        *,
        persona: str | None = None,
        place: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> _builtins.list[Note]:
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(NoteRow)
                    .where(*self._where_member(user_id, persona, place))
                    .order_by(col(NoteRow.created_at).desc(), col(NoteRow.id).desc())
                    .limit(limit)
                    .offset(offset)
                )
            ).scalars()
            return [_note(r) for r in rows]

    async def count(
        self, user_id: str, *, persona: str | None = None, place: str | None = None
    ) -> int:
        async with self._sessions() as session:
            n = await session.scalar(
                select(func.count())
                .select_from(NoteRow)
                .where(*self._where_member(user_id, persona, place))
            )
            return int(n or 0)

    async def delete(self, user_id: str, note_id: int) -> Note:
        note = await self.get(user_id, note_id)
        async with self._sessions() as session:
            await session.execute(sa_delete(NoteRow).where(col(NoteRow.id) == note.id))
            await session.commit()
        return note

    async def delete_all(
        self, user_id: str, *, persona: str | None = None, place: str | None = None
    ) -> int:
        async with self._sessions() as session:
            result = await session.execute(
                sa_delete(NoteRow).where(*self._where_member(user_id, persona, place))
            )
            await session.commit()
            return int(getattr(result, "rowcount", 0) or 0)

    async def newest(self, scope: Scope, limit: int) -> _builtins.list[Note]:
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(NoteRow)
                    .where(*self._where_scope(scope))
                    .order_by(col(NoteRow.created_at).desc(), col(NoteRow.id).desc())
                    .limit(limit)
                )
            ).scalars()
            return [_note(r) for r in rows]

    async def search(self, scope: Scope, query: str, limit: int) -> _builtins.list[Note]:
        words = query_words(query)
        if not words or limit <= 0:
            return []
        params: dict[str, Any] = {
            "user_id": scope.user_id,
            "place": scope.place,
            "persona": scope.persona,
            "limit": limit,
        }
        persona_clause = "" if scope.persona is None else "AND n.persona = :persona"
        async with self._sessions() as session:
            if self._dialect(session) == "postgresql":
                # Why the member's notes first: they are few (the caps), while a common
                # word matches most of the table; rank those few by the stored tsvector.
                params["q"] = " | ".join(words)
                sql = f"""
                    WITH mine AS MATERIALIZED (
                        SELECT n.id, n.search, n.created_at FROM memory_notes AS n
                        WHERE n.kind = 'note' AND n.user_id = :user_id AND n.place = :place
                          {persona_clause})
                    SELECT id FROM mine WHERE search @@ to_tsquery('simple', :q)
                    ORDER BY ts_rank(search, to_tsquery('simple', :q)) DESC,
                             created_at DESC, id DESC
                    LIMIT :limit"""
            else:
                # FTS5: the scope token (few rows) AND any of the words, each a quoted
                # string (no operator or column syntax from the member).
                ored = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
                params["q"] = f"scope : {_scope_token(scope)} AND text : ({ored})"
                sql = f"""
                    SELECT n.id FROM memory_notes_fts AS f
                    JOIN memory_notes AS n ON n.id = f.rowid
                    WHERE memory_notes_fts MATCH :q
                      AND n.kind = 'note' AND n.user_id = :user_id AND n.place = :place
                      {persona_clause}
                    ORDER BY bm25(memory_notes_fts, 1.0, 0.0), n.created_at DESC, n.id DESC
                    LIMIT :limit"""
            ids = [r[0] for r in (await session.execute(text(sql), params)).all()]
            if not ids:
                return []
            rows = {
                r.id: r
                for r in (
                    await session.execute(select(NoteRow).where(col(NoteRow.id).in_(ids)))
                ).scalars()
            }
        return [_note(rows[i]) for i in ids if i in rows]

    async def lore(self, place: str, persona: str) -> _builtins.list[Note]:
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(NoteRow)
                    .where(
                        col(NoteRow.kind) == "lore",
                        col(NoteRow.place) == place,
                        col(NoteRow.persona) == persona,
                    )
                    .order_by(col(NoteRow.id))
                )
            ).scalars()
            return [_note(r) for r in rows]

    async def delete_lore(self, place: str, note_id: int) -> Note:
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(NoteRow).where(
                        col(NoteRow.id) == note_id,
                        col(NoteRow.kind) == "lore",
                        col(NoteRow.place) == place,
                    )
                )
            ).scalar_one_or_none()
            if row is None:
                raise NoteNotFound(f"there is no lore #{note_id} in this server")
            note = _note(row)
            await session.delete(row)
            await session.commit()
            return note

    async def counts_by_member(self, place: str) -> dict[str, int]:
        async with self._sessions() as session:
            rows = await session.execute(
                select(col(NoteRow.user_id), func.count())
                .where(col(NoteRow.kind) == "note", col(NoteRow.place) == place)
                .group_by(col(NoteRow.user_id))
            )
            return {str(u): int(n) for u, n in rows.all()}

    async def purge_older_than(self, cutoff: datetime) -> int:
        async with self._sessions() as session:
            result = await session.execute(
                sa_delete(NoteRow).where(
                    col(NoteRow.kind) == "note", col(NoteRow.created_at) < cutoff
                )
            )
            await session.commit()
            return int(getattr(result, "rowcount", 0) or 0)

    async def is_off(self, user_id: str) -> bool:
        async with self._sessions() as session:
            return await session.get(MemoryOptOut, user_id) is not None

    async def set_off(self, user_id: str, off: bool) -> None:
        async with self._sessions() as session:
            row = await session.get(MemoryOptOut, user_id)
            if off and row is None:
                session.add(MemoryOptOut(user_id=user_id))
            elif not off and row is not None:
                await session.delete(row)
            await session.commit()

    async def delete_user_data(self, user_id: str) -> int:
        if not user_id:
            return 0
        gone = await self.delete_all(user_id)
        async with self._sessions() as session:
            await session.execute(
                sa_delete(MemoryOptOut).where(col(MemoryOptOut.user_id) == user_id)
            )
            # Lore an admin wrote stays (it is about the server), without their name.
            await session.execute(
                update(NoteRow)
                .where(col(NoteRow.kind) == "lore", col(NoteRow.created_by) == user_id)
                .values(created_by="")
            )
            await session.commit()
        return gone

    async def export_user_data(self, user_id: str) -> dict[str, Any]:
        notes = await self.list(user_id, limit=1_000_000)
        return {
            "notes": [n.as_dict() for n in notes],
            "memory_off": await self.is_off(user_id),
        }
