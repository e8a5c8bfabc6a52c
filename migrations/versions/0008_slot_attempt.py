"""A schedule slot says which attempt it is: 1, or 2 once a slot a restart interrupted
was claimed again for its one retry (``missed: catch-up``, within the grace).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("schedule_slots") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("schedule_slots") as batch:
        batch.drop_column("attempt")
