"""Notes in the database, searched with the database's own full-text.

:class:`SqlNoteStore` keeps the contract of :class:`memory.notes.NoteStore` (see that
module for the scopes) on SQLite FTS5 (an external-content table kept by triggers;
its matches ranked by shared words, then recency) or PostgreSQL (a generated ``tsvector`` with a GIN index, ranked by
``ts_rank``), both made by the migration. The text search configuration is ``simple``
on PostgreSQL (no stemming, any language), like FTS5's default tokenizer.

What a prompt needs (:meth:`SqlNoteStore.for_prompt`: the opt-out, the scope's notes,
the lore) is one statement; the matches are ranked among the scope's notes (see
:class:`memory.notes.PromptNotes` and ``benchmarks/README.md`` for why).
"""

from __future__ import annotations

import builtins as _builtins
from datetime import datetime
from typing import Any, Final

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from executor.ports import Clock, RealClock
from memory.errors import MemoryFull, NoteNotFound
from memory.notes import (
    MAX_PROMPT_CANDIDATES,
    Caps,
    InMemoryNoteStore,
    Note,
    NoteStore,
    PromptNotes,
    Scope,
    full_reason,
    place_of,
    query_words,
    rank_matches,
    scope_tokens,
)
from memory.tables import MemoryOptOut, NoteRow

__all__ = [
    "Caps",
    "InMemoryNoteStore",
    "Note",
    "NoteStore",
    "PromptNotes",
    "Scope",
    "SqlNoteStore",
    "place_of",
    "query_words",
    "scope_tokens",
]

# A member's notes in one scope are few (the caps); this bounds a search's rows anyway.
MAX_SCOPE_ROWS = 1000
# Why every write begins IMMEDIATE on SQLite (a copy of adapters.storage.db.IMMEDIATE:
# memory sits below adapters; tests/memory checks the two stay equal): a write to the
# notes reads FTS5's own tables first, and a deferred transaction that reads and then
# writes gets "database is locked" at once, without the busy timeout, whenever another
# connection is writing (a run's audit rows). BEGIN IMMEDIATE waits for the lock instead.
_IMMEDIATE: Final[dict[str, Any]] = {"coterie_sqlite_begin": "IMMEDIATE"}
_NULLS = ", ".join(["NULL"] * 10)
_COLUMNS = "n.id, n.kind, n.user_id, n.persona, n.place, n.text, n.created_at, n.created_by, n.run_id, n.scope"


def _scope_token(scope: Scope) -> str:
    member, persona = scope_tokens(scope.user_id, scope.place, scope.persona or "").split()
    return member if scope.persona is None else persona


def _by_id(note: Note) -> int:
    return note.id


def _note_of(row: Any) -> Note:
    """A note from a textual row's mapping (a ``for_prompt`` union)."""
    return Note(
        id=int(row["id"]),
        kind=row["kind"],
        user_id=row["user_id"],
        persona=row["persona"],
        place=row["place"],
        text=row["text"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        run_id=row["run_id"],
    )


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


class SqlNoteStore:
    """Notes in the database; full-text search by SQLite FTS5 or PostgreSQL tsvector."""

    data_name = "memory notes"

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, clock: Clock | None = None
    ) -> None:
        self._sessions = sessions
        self._clock = clock or RealClock()

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
    def _where_member(
        user_id: str, persona: str | None, place: str | None, run_id: str | None = None
    ) -> list[Any]:
        where = [col(NoteRow.kind) == "note", col(NoteRow.user_id) == user_id]
        if persona is not None:
            where.append(col(NoteRow.persona) == persona)
        if place is not None:
            where.append(col(NoteRow.place) == place)
        if run_id is not None:
            where.append(col(NoteRow.run_id) == run_id)
        return where

    async def add(
        self, scope: Scope, text: str, *, caps: Caps, run_id: str = "", created_by: str = ""
    ) -> Note:
        persona = scope.persona or ""
        async with self._sessions() as session:
            await session.connection(execution_options=_IMMEDIATE)
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
            problem = full_reason(caps, int(count), int(chars), text)
            if problem:
                raise MemoryFull(problem)
            row = NoteRow(
                kind="note",
                user_id=scope.user_id,
                persona=persona,
                place=scope.place,
                text=text,
                created_at=self._clock.now(),
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
            await session.connection(execution_options=_IMMEDIATE)
            row = NoteRow(
                kind="lore",
                user_id="",
                persona=persona,
                place=place,
                text=text,
                created_at=self._clock.now(),
                created_by=by,
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
        run_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> _builtins.list[Note]:
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(NoteRow)
                    .where(*self._where_member(user_id, persona, place, run_id))
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
        async with self._sessions() as session:
            await session.connection(execution_options=_IMMEDIATE)
            row = (
                await session.execute(
                    select(NoteRow).where(
                        col(NoteRow.id) == note_id, *self._where_member(user_id, None, None)
                    )
                )
            ).scalar_one_or_none()
            if row is None:
                raise NoteNotFound(f"there is no note #{note_id} of yours")
            note = _note(row)
            await session.delete(row)
            await session.commit()
        return note

    async def delete_all(
        self, user_id: str, *, persona: str | None = None, place: str | None = None
    ) -> int:
        async with self._sessions() as session:
            await session.connection(execution_options=_IMMEDIATE)
            result = await session.execute(
                sa_delete(NoteRow).where(*self._where_member(user_id, persona, place))
            )
            await session.commit()
            return int(getattr(result, "rowcount", 0) or 0)

    @staticmethod
    async def _newest(session: AsyncSession, scope: Scope, limit: int) -> _builtins.list[Note]:
        rows = (
            await session.execute(
                select(NoteRow)
                .where(*SqlNoteStore._where_scope(scope))
                .order_by(col(NoteRow.created_at).desc(), col(NoteRow.id).desc())
                .limit(limit)
            )
        ).scalars()
        return [_note(r) for r in rows]

    async def newest(self, scope: Scope, limit: int) -> _builtins.list[Note]:
        async with self._sessions() as session:
            return await self._newest(session, scope, limit)

    @staticmethod
    async def _search(
        session: AsyncSession, scope: Scope, query: str, limit: int
    ) -> _builtins.list[Note]:
        words = query_words(query)
        if not words or limit <= 0:
            return []
        params: dict[str, Any] = {"user_id": scope.user_id, "place": scope.place, "limit": limit}
        persona_clause = ""
        if scope.persona is not None:
            params["persona"] = scope.persona
            persona_clause = "AND n.persona = :persona"
        if session.get_bind().dialect.name == "postgresql":
            # Why the member's notes first: they are few (the caps), while a common
            # word matches most of the table; rank those few by the stored tsvector.
            params["q"] = " | ".join(words)
            sql = f"""
                WITH n AS MATERIALIZED (
                    SELECT * FROM memory_notes AS n
                    WHERE n.kind = 'note' AND n.user_id = :user_id AND n.place = :place
                      {persona_clause})
                SELECT {_COLUMNS} FROM n WHERE n.search @@ to_tsquery('simple', :q)
                ORDER BY ts_rank(n.search, to_tsquery('simple', :q)) DESC,
                         n.created_at DESC, n.id DESC
                LIMIT :limit"""
        else:
            # FTS5: any of the words (each a quoted string: no operator or column
            # syntax from the member) AND the scope token, in that order (FTS5 is 5x
            # faster so). Ranked here, not by bm25(): bm25 counts every row holding
            # each word (its IDF) at every query, 24 ms over 100,000 notes, to order
            # the few notes of one member; they are ranked by how many of the words
            # each holds, then recency, like the in-memory store. CROSS JOIN keeps
            # the FTS table outside: SQLite otherwise walks the member's notes and
            # evaluates the MATCH once for each (8x slower).
            ored = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
            params["q"] = f"text : ({ored}) AND scope : {_scope_token(scope)}"
            params["limit"] = MAX_SCOPE_ROWS
            sql = f"""
                SELECT {_COLUMNS} FROM memory_notes_fts AS f
                CROSS JOIN memory_notes AS n ON n.id = f.rowid
                WHERE memory_notes_fts MATCH :q
                  AND n.kind = 'note' AND n.user_id = :user_id AND n.place = :place
                  {persona_clause}
                ORDER BY n.created_at DESC, n.id DESC
                LIMIT :limit"""
        stmt = select(NoteRow).from_statement(text(sql).bindparams(**params))
        found = [_note(r) for r in (await session.execute(stmt)).scalars()]
        if session.get_bind().dialect.name == "postgresql":
            return found
        return rank_matches(found, query, limit)

    async def search(self, scope: Scope, query: str, limit: int) -> _builtins.list[Note]:
        async with self._sessions() as session:
            return await self._search(session, scope, query, limit)

    @staticmethod
    async def _lore(session: AsyncSession, place: str, persona: str | None) -> _builtins.list[Note]:
        where = [col(NoteRow.kind) == "lore", col(NoteRow.place) == place]
        if persona is not None:
            where.append(col(NoteRow.persona) == persona)
        rows = (
            await session.execute(select(NoteRow).where(*where).order_by(col(NoteRow.id)))
        ).scalars()
        return [_note(r) for r in rows]

    async def for_prompt(
        self, scope: Scope, query: str, *, newest: int, matches: int, lore_persona: str | None
    ) -> PromptNotes:
        """One statement: the scope's notes (newest first, at most
        ``MAX_PROMPT_CANDIDATES``), the opt-out and the lore (see :class:`PromptNotes`
        for why the matches are ranked here)."""
        want_notes = newest > 0 or matches > 0
        want_lore = lore_persona is not None and scope.place != "dm"
        if not want_notes and not want_lore:
            return PromptNotes()
        params: dict[str, Any] = {"place": scope.place}
        parts: list[str] = []
        if want_notes:
            params["user_id"] = scope.user_id
            persona_clause = ""
            if scope.persona is not None:
                params["persona"] = scope.persona
                persona_clause = "AND n.persona = :persona"
            params["candidates"] = MAX_PROMPT_CANDIDATES
            parts.append(
                f"""SELECT * FROM (SELECT {_COLUMNS}, 'note' AS part FROM memory_notes AS n
                    WHERE n.kind = 'note' AND n.user_id = :user_id AND n.place = :place
                      {persona_clause}
                    ORDER BY n.created_at DESC, n.id DESC LIMIT :candidates) AS mine"""
            )
            parts.append(
                f"SELECT {_NULLS}, 'off' AS part FROM memory_opt_out WHERE user_id = :user_id"
            )
        if want_lore:
            params["lore_persona"] = lore_persona
            parts.append(
                f"""SELECT {_COLUMNS}, 'lore' AS part FROM memory_notes AS n
                    WHERE n.kind = 'lore' AND n.place = :place AND n.persona = :lore_persona"""
            )
        stmt = (
            text(" UNION ALL ".join(parts))
            .bindparams(**params)
            .columns(created_at=NoteRow.__table__.c.created_at.type)  # type: ignore[attr-defined]
        )
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).mappings().all()
            off = any(r["part"] == "off" for r in rows)
            notes = [_note_of(r) for r in rows if r["part"] == "note"]
            lore = tuple(sorted((_note_of(r) for r in rows if r["part"] == "lore"), key=_by_id))
        if off:
            return PromptNotes(lore=lore, off=True)
        # Newest first, as read (a union keeps each part's order in practice; sorted
        # again so that no database may reorder it).
        notes.sort(key=lambda n: (n.created_at, n.id), reverse=True)
        return PromptNotes(
            newest=tuple(notes[:newest]),
            matches=tuple(rank_matches(notes, query, matches)),
            lore=lore,
        )

    async def lore(self, place: str, persona: str) -> _builtins.list[Note]:
        async with self._sessions() as session:
            return await self._lore(session, place, persona)

    async def all_lore(self, place: str) -> _builtins.list[Note]:
        async with self._sessions() as session:
            return await self._lore(session, place, None)

    async def delete_lore(self, place: str, note_id: int) -> Note:
        async with self._sessions() as session:
            await session.connection(execution_options=_IMMEDIATE)
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
            await session.connection(execution_options=_IMMEDIATE)
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
            await session.connection(execution_options=_IMMEDIATE)
            row = await session.get(MemoryOptOut, user_id)
            if off and row is None:
                session.add(MemoryOptOut(user_id=user_id, since=self._clock.now()))
            elif not off and row is not None:
                await session.delete(row)
            await session.commit()

    async def delete_user_data(self, user_id: str) -> int:
        """Delete the member's notes and opt-out; lore they wrote as an admin stays
        (it is about the server), without their name. Returns the notes deleted."""
        if not user_id:
            return 0
        async with self._sessions() as session:
            await session.connection(execution_options=_IMMEDIATE)
            result = await session.execute(
                sa_delete(NoteRow).where(*self._where_member(user_id, None, None))
            )
            await session.execute(
                sa_delete(MemoryOptOut).where(col(MemoryOptOut.user_id) == user_id)
            )
            await session.execute(
                update(NoteRow)
                .where(col(NoteRow.kind) == "lore", col(NoteRow.created_by) == user_id)
                .values(created_by="")
            )
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    async def export_user_data(self, user_id: str) -> dict[str, Any]:
        """Every note about the member, whether they turned memory off, and the lore
        they wrote as an admin."""
        async with self._sessions() as session:
            notes = (
                await session.execute(
                    select(NoteRow)
                    .where(*self._where_member(user_id, None, None))
                    .order_by(col(NoteRow.created_at).desc(), col(NoteRow.id).desc())
                )
            ).scalars()
            exported = [_note(r).as_dict() for r in notes]
            opt_out = await session.get(MemoryOptOut, user_id)
            lore = (
                await session.execute(
                    select(NoteRow)
                    .where(col(NoteRow.kind) == "lore", col(NoteRow.created_by) == user_id)
                    .order_by(col(NoteRow.id))
                )
            ).scalars()
            return {
                "notes": exported,
                "memory_off": opt_out is not None,
                "memory_off_since": opt_out.since.isoformat() if opt_out is not None else None,
                "lore_written": [_note(r).as_dict() for r in lore],
            }
