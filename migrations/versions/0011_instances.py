"""Several processes on one database: the instances (who runs, their heartbeat and
lease), named leases (Discord shards, the scheduler's leader), and the owner of each
run and budget reservation, so crash recovery settles only what a dead instance owned.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("host", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("shard_count", sa.Integer(), nullable=True),
        sa.Column("shards", sa.JSON(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("draining", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("instances") as batch:
        batch.create_index("ix_instances_expires_at", ["expires_at"], unique=False)
    op.create_table(
        "leases",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("holder", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("term", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("leases") as batch:
        batch.create_index("ix_leases_holder", ["holder"], unique=False)
    for table in ("audit_runs", "budget_reservations"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True)
            )


def downgrade() -> None:
    for table in ("budget_reservations", "audit_runs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner")
    with op.batch_alter_table("leases") as batch:
        batch.drop_index("ix_leases_holder")
    op.drop_table("leases")
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_expires_at")
    op.drop_table("instances")
