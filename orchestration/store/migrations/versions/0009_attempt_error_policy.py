"""step_attempts: the kind of error an attempt failed with, and the on_error policy that acted

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_attempts") as batch:
        batch.add_column(sa.Column("error_kind", sa.String(32), nullable=True))
        batch.add_column(sa.Column("policy", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("step_attempts") as batch:
        batch.drop_column("policy")
        batch.drop_column("error_kind")
