"""The audit records which version of a skill ran.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_runs") as batch:
        batch.add_column(sa.Column("skill_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_runs") as batch:
        batch.drop_column("skill_version")
