"""map_chunks: the results of one chunk of a map step, kept until the collector reads them

A big map's chunks write their elements' results here and send the collector a small
summary instead of the results themselves (the chord's messages stay small at 10,000
elements).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "map_chunks",
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("step", sa.String(200), primary_key=True),
        sa.Column("start", sa.Integer, primary_key=True),
        sa.Column("results", JSONType, nullable=False),
        sa.Column("ok", JSONType, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("map_chunks")
