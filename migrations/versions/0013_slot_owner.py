"""A schedule slot carries the instance that claimed it (its owner), so that, with
several processes on one database, the scheduler's leader retries or closes only the
slots a dead instance left ``running``, never those a live one is still running.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("schedule_slots") as batch:
        batch.add_column(
            sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("schedule_slots") as batch:
        batch.drop_column("owner")
