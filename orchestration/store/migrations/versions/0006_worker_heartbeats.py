"""worker heartbeats: a row per worker process instance, and the holder of a running step

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("queues", JSONType, nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("beat_at", Timestamp, nullable=False),
        sa.Column("stopped_at", Timestamp, nullable=True),
        sa.Column("swept_at", Timestamp, nullable=True),
    )
    op.create_index("ix_workers_beat_at", "workers", ["beat_at"])
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("holder", sa.String(32), nullable=True))
    # Partial: a record clears the holder, so only steps running now are in it.
    op.create_index("ix_steps_holder", "steps", ["holder"],
                    postgresql_where=sa.text("holder IS NOT NULL"),
                    sqlite_where=sa.text("holder IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_steps_holder", table_name="steps")
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("holder")
    op.drop_index("ix_workers_beat_at", table_name="workers")
    op.drop_table("workers")
