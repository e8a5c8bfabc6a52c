"""Memory: members' notes and guild lore, with the database's own full-text search
(SQLite FTS5 kept by triggers; PostgreSQL a generated tsvector with a GIN index), and
the members who turned memory off.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

# The search structures live outside the SQLModel metadata; migrations/env.py tells
# `alembic check` to leave them alone (FTS_TABLES, SEARCH_COLUMN).
_SQLITE_FTS = [
    """CREATE VIRTUAL TABLE memory_notes_fts USING fts5(
        text, scope, content='memory_notes', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    )""",
    """CREATE TRIGGER memory_notes_ai AFTER INSERT ON memory_notes BEGIN
        INSERT INTO memory_notes_fts(rowid, text, scope) VALUES (new.id, new.text, new.scope);
    END""",
    """CREATE TRIGGER memory_notes_ad AFTER DELETE ON memory_notes BEGIN
        INSERT INTO memory_notes_fts(memory_notes_fts, rowid, text, scope)
        VALUES ('delete', old.id, old.text, old.scope);
    END""",
    """CREATE TRIGGER memory_notes_au AFTER UPDATE OF text, scope ON memory_notes BEGIN
        INSERT INTO memory_notes_fts(memory_notes_fts, rowid, text, scope)
        VALUES ('delete', old.id, old.text, old.scope);
        INSERT INTO memory_notes_fts(rowid, text, scope) VALUES (new.id, new.text, new.scope);
    END""",
]
_POSTGRES_SEARCH = [
    """ALTER TABLE memory_notes ADD COLUMN search tsvector
        GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED""",
    "CREATE INDEX ix_memory_notes_search ON memory_notes USING gin (search)",
]


def upgrade() -> None:
    op.create_table(
        "memory_notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("persona", sa.String(length=64), nullable=False),
        sa.Column("place", sa.String(length=40), nullable=False),
        sa.Column("text", sa.String(length=500), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("scope", sa.String(length=40), nullable=False),
    )
    op.create_index(
        "ix_memory_notes_scope", "memory_notes", ["user_id", "place", "persona", "created_at"]
    )
    op.create_index("ix_memory_notes_lore", "memory_notes", ["kind", "place", "persona"])
    op.create_table(
        "memory_opt_out",
        sa.Column("user_id", sa.String(length=32), primary_key=True),
        sa.Column("since", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    for statement in _SQLITE_FTS if dialect == "sqlite" else _POSTGRES_SEARCH:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("memory_notes_au", "memory_notes_ad", "memory_notes_ai"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS memory_notes_fts")
    op.drop_table("memory_opt_out")
    op.drop_index("ix_memory_notes_lore", table_name="memory_notes")
    op.drop_index("ix_memory_notes_scope", table_name="memory_notes")
    op.drop_table("memory_notes")
