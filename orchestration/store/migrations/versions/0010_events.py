"""events: every event received (emitted, webhook, stream, schedule) and what became of it

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("payload", JSONType, nullable=True),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(200), nullable=True),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index("ix_events_received_at", "events", ["received_at"])
    op.create_index("ix_events_event_id", "events", ["event_id"])
    op.create_index("ix_events_run_id", "events", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_events_run_id", table_name="events")
    op.drop_index("ix_events_event_id", table_name="events")
    op.drop_index("ix_events_received_at", table_name="events")
    op.drop_table("events")
