"""trace: tokens, gate verdicts and breaker states on steps and attempts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("tokens_in", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("tokens_out", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("gate", sa.Text(), nullable=True))
    with op.batch_alter_table("step_attempts") as batch:
        batch.add_column(sa.Column("tokens_in", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("tokens_out", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("gate", sa.Text(), nullable=True))
        batch.add_column(sa.Column("breaker", sa.String(length=400), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("step_attempts") as batch:
        for column in ("breaker", "gate", "tokens_out", "tokens_in"):
            batch.drop_column(column)
    with op.batch_alter_table("steps") as batch:
        for column in ("gate", "tokens_out", "tokens_in"):
            batch.drop_column(column)
