"""permit waits: runs and steps waiting for a max_parallel permit, outside any queue

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "permit_waits",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(300), nullable=False),
        sa.Column("max_parallel", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("step_name", sa.String(200), nullable=True),
        sa.Column("holder", sa.String(300), nullable=False),
        sa.Column("resume", JSONType, nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("woken_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_permit_waits_next", "permit_waits",
                    ["scope", "woken_at", "priority", "id"])
    op.create_index("ix_permit_waits_run_id", "permit_waits", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_permit_waits_run_id", table_name="permit_waits")
    op.drop_index("ix_permit_waits_next", table_name="permit_waits")
    op.drop_table("permit_waits")
