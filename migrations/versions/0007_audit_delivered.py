"""An audit run records whether its answer reached Discord (``delivered``, and
``delivery_error`` saying why not): a run can be ``ok`` and charged while its member
never saw the answer.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_runs") as batch:
        batch.add_column(sa.Column("delivered", sa.Boolean(), nullable=True))
        batch.add_column(
            sa.Column("delivery_error", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_runs") as batch:
        batch.drop_column("delivery_error")
        batch.drop_column("delivered")
