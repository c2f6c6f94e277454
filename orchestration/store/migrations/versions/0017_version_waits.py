"""version waits: step messages of runs whose workflow version no worker at hand carries

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("workers", sa.Column("workflows", JSONType, nullable=True))
    op.create_table(
        "version_waits",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("step_name", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(300), nullable=False),
        sa.Column("message", JSONType, nullable=False),
        sa.Column("parked_by", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_version_waits_version", "version_waits", ["workflow", "version", "id"])
    op.create_index("ix_version_waits_run_id", "version_waits", ["run_id"])
    op.create_index("ix_version_waits_created_at", "version_waits", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_version_waits_created_at", table_name="version_waits")
    op.drop_index("ix_version_waits_run_id", table_name="version_waits")
    op.drop_index("ix_version_waits_version", table_name="version_waits")
    op.drop_table("version_waits")
    op.drop_column("workers", "workflows")
