"""trace: every model call of an attempt (model, outcome, latency, breaker state)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("step_attempts") as batch:
        batch.add_column(sa.Column("calls", JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("step_attempts") as batch:
        batch.drop_column("calls")
