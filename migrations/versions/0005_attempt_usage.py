"""A model attempt records its usage and cost: crash recovery charges what the
attempts record, even when the process died before the step finished.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = ("input_tokens", "output_tokens", "cost_micros")


def upgrade() -> None:
    with op.batch_alter_table("audit_model_attempts") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("audit_model_attempts") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
