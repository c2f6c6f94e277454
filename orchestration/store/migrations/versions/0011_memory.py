"""memory: conversation turns and their summaries, kept across runs

A workflow declared with ``memory=Memory(key=...)`` keeps each conversation's turns
(one row per message, numbered by a per-conversation sequence) and the summaries of
turns that left the window (each covers the turns up to ``upto_seq``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "memory_turns",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("conversation", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("step", sa.String(200), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("workflow", "conversation", "seq", name="uq_memory_turns_seq"),
    )
    op.create_index("ix_memory_turns_created", "memory_turns", ["workflow", "created_at"])
    op.create_index("ix_memory_turns_conversation", "memory_turns", ["conversation"])
    op.create_table(
        "memory_summaries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("conversation", sa.String(200), nullable=False),
        sa.Column("upto_seq", sa.Integer, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("workflow", "conversation", "upto_seq",
                            name="uq_memory_summaries_upto"),
    )
    op.create_index("ix_memory_summaries_created", "memory_summaries",
                    ["workflow", "created_at"])
    op.create_index("ix_memory_summaries_conversation", "memory_summaries", ["conversation"])


def downgrade() -> None:
    op.drop_index("ix_memory_summaries_conversation", table_name="memory_summaries")
    op.drop_index("ix_memory_summaries_created", table_name="memory_summaries")
    op.drop_table("memory_summaries")
    op.drop_index("ix_memory_turns_conversation", table_name="memory_turns")
    op.drop_index("ix_memory_turns_created", table_name="memory_turns")
    op.drop_table("memory_turns")
