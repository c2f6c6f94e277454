"""runs: the names of the inputs whose stored copy redaction changed

Secrets are never stored, so a run re-dispatched from the results DB (resume, the
reconciler) must be given these inputs again; a redact= hook's changes leave no marker in
the stored copy, so they are recorded when the run is written. NULL for runs written
before this revision (their stored copies are searched for the redaction marker).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("redacted_inputs", JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("redacted_inputs")
