"""The migrations build exactly the tables the models declare (SQLite; PostgreSQL in CI)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from orchestration.store.engine import upgrade
from orchestration.store.models import Base


def test_upgraded_schema_matches_the_models(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'results.db'}")
    upgrade(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    # Server defaults and type variants are not compared; tables, columns and indexes are.
    assert diff == []
