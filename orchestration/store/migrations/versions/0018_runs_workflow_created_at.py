"""runs (workflow, created_at) replaces runs (workflow): a workflow's runs in time order

``orchestrate runs -w``, ``stats`` and the dashboard's list filter by workflow and order or
bound by created_at; with two single-column indexes PostgreSQL combined them with a
BitmapAnd or walked created_at filtering the workflow out (bench/scale_db.py at 1M runs).
The composite serves both, and the workflow list; (workflow) alone is its prefix.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_workflow_created_at", "runs", ["workflow", "created_at"])
    op.drop_index("ix_runs_workflow", table_name="runs")


def downgrade() -> None:
    op.create_index("ix_runs_workflow", "runs", ["workflow"])
    op.drop_index("ix_runs_workflow_created_at", table_name="runs")
