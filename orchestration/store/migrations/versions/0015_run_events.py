"""run_events: each run's live event stream on the embedded default (no Redis)

One row per event of ``handle.stream()`` (step started/finished, partial outputs, LLM
tokens, run finished); the row id is the event's offset. Deleted with the run (cascade),
trimmed to ``ORCH_STREAM_MAXLEN`` per run, pruned after ``ORCH_STREAM_TTL``.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("once", sa.String(64)),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("run_id", "once", name="uq_run_events_once"),
    )
    op.create_index("ix_run_events_run_id_id", "run_events", ["run_id", "id"])
    op.create_index("ix_run_events_created_at", "run_events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_run_events_created_at", table_name="run_events")
    op.drop_index("ix_run_events_run_id_id", table_name="run_events")
    op.drop_table("run_events")
