"""A guild's memory settings: on or off, notes shared across its personas, each save
confirmed by the member. The lore index becomes partial (only lore rows): one that
started with ``kind`` made SQLite scan every note for a member's query.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


_LORE_ONLY = sa.text("kind = 'lore'")


def upgrade() -> None:
    op.drop_index("ix_memory_notes_lore", table_name="memory_notes")
    op.create_index(
        "ix_memory_notes_lore",
        "memory_notes",
        ["place", "persona"],
        sqlite_where=_LORE_ONLY,
        postgresql_where=_LORE_ONLY,
    )
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("memory", sa.Boolean(), nullable=True))
        batch.add_column(
            sa.Column("memory_shared", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(
            sa.Column("memory_confirm", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("memory_confirm")
        batch.drop_column("memory_shared")
        batch.drop_column("memory")
    op.drop_index("ix_memory_notes_lore", table_name="memory_notes")
    op.create_index("ix_memory_notes_lore", "memory_notes", ["kind", "place", "persona"])
