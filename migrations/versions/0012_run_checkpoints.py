"""Runs that resume: a running chat run's last completed step (``run_checkpoints``),
kept so that after a restart its member is offered Resume or Discard (the offer's
state is on the same row), the audit link from a resumed run to the run it
continues (``audit_runs.resumed_from``), and an accepted MCP tool's hints
(``mcp_tool_pins.read_only``, ``idempotent``: whether a resumed run may call it again
without asking).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "run_checkpoints",
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(length=64), primary_key=True),
        sa.Column("user_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("done", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("offer", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("offer_expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("offer_channel_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("offer_message_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("decided_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("resumed_as", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    )
    op.create_index("ix_run_checkpoints_user_id", "run_checkpoints", ["user_id"])
    with op.batch_alter_table("audit_runs") as batch:
        batch.add_column(
            sa.Column("resumed_from", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
    with op.batch_alter_table("mcp_tool_pins") as batch:
        batch.add_column(
            sa.Column("read_only", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(
            sa.Column("idempotent", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("mcp_tool_pins") as batch:
        batch.drop_column("idempotent")
        batch.drop_column("read_only")
    with op.batch_alter_table("audit_runs") as batch:
        batch.drop_column("resumed_from")
    op.drop_index("ix_run_checkpoints_user_id", table_name="run_checkpoints")
    op.drop_table("run_checkpoints")
