"""The results database: runs, steps and attempts (SQLAlchemy 2, Alembic migrations)."""

from orchestration.store.repository import AttemptRecord, Claim, StepOutcome, Store

__all__ = ["AttemptRecord", "Claim", "StepOutcome", "Store"]
