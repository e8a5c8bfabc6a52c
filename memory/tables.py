"""The notes table. Full-text search is each database's own (see ``memory.store``):
an FTS5 table kept by triggers on SQLite, a generated ``tsvector`` column with a GIN
index on PostgreSQL; both are made by the migration, outside this model.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel

from executor.ports import utcnow
from memory.notes import NOTE_MAX_CHARS

__all__ = ["NOTE_MAX_CHARS", "MemoryOptOut", "NoteRow"]


class NoteRow(SQLModel, table=True):
    __tablename__ = "memory_notes"
    __table_args__ = (
        Index("ix_memory_notes_scope", "user_id", "place", "persona", "created_at"),
        # Partial: only lore. Why: an index that starts with kind lured SQLite's planner
        # (no statistics) into scanning every note for a member's query (300 ms at
        # 100,000 notes); the member's queries have ix_memory_notes_scope.
        Index(
            "ix_memory_notes_lore",
            "place",
            "persona",
            sqlite_where=text("kind = 'lore'"),
            postgresql_where=text("kind = 'lore'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    # "note": what a persona keeps about one member; "lore": what an admin wrote about
    # the server for a persona, for every member (user_id "").
    kind: str = Field(default="note", max_length=8)
    user_id: str = Field(default="", max_length=32)
    # The persona that keeps it (a guild may let its personas share a member's notes).
    persona: str = Field(max_length=64)
    # "guild:<id>" or "dm": a note never crosses from one place to another.
    place: str = Field(max_length=40)
    text: str = Field(max_length=NOTE_MAX_CHARS)
    created_at: datetime = Field(default_factory=utcnow)
    # Who wrote it: the member (through the persona's remember tool) or the admin.
    created_by: str = Field(default="", max_length=32)
    # The run whose remember call saved it ("" for lore): the audit has the call.
    run_id: str = Field(default="", max_length=36)
    # Two search tokens for the note's scope ("m<member+place> p<member+place+persona>",
    # memory.store.scope_tokens). SQLite's FTS5 indexes them beside the text, so a
    # search intersects the member's few notes with the words instead of ranking every
    # note that shares a common word and filtering after.
    scope: str = Field(default="", max_length=40)


class MemoryOptOut(SQLModel, table=True):
    """A member who turned memory off for themselves (``/memory off``)."""

    __tablename__ = "memory_opt_out"

    user_id: str = Field(primary_key=True, max_length=32)
    since: datetime = Field(default_factory=utcnow)
