"""batch_elements: elements of batched steps (batch_size=) buffered across runs

Each row is one run's element of a step declared ``batch_size=N``: its arguments and the
run's parked message, until a batch call records the step and sends the message again.
Kept in the results DB so that no element is lost when a worker dies.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "batch_elements",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("step", sa.String(300), nullable=False),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("step_name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("kwargs", JSONType, nullable=False),
        sa.Column("resume", JSONType, nullable=False),
        sa.Column("prior_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claimed_at", sa.DateTime(timezone=True)),
        sa.Column("batch_id", sa.String(32)),
        sa.Column("holder", sa.String(300)),
        sa.Column("taken_at", sa.DateTime(timezone=True)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("run_id", "step_name", name="uq_batch_elements_run_step"),
    )
    op.create_index("ix_batch_elements_next", "batch_elements", ["step", "status", "id"])


def downgrade() -> None:
    op.drop_index("ix_batch_elements_next", table_name="batch_elements")
    op.drop_table("batch_elements")
