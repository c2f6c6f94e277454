"""The testing helpers users enable in their own suites: fixtures and embedded settings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import kombu.pools
import pytest
from sqlalchemy.engine import make_url

from orchestration import Workflow, default_orchestrator
from orchestration.app import Orchestrator
from orchestration.testing import embedded_orchestrator, embedded_settings


@pytest.fixture
def restore_broker_pools() -> Iterator[None]:
    """Undo what ``Orchestrator.reconfigure`` breaks (kombu's process-wide memory:// pool).

    Request it *before* ``embedded_default`` so it runs after that fixture's teardown.
    """
    yield
    kombu.pools.reset()  # forget the closed pools, so the next app gets fresh ones
    app = default_orchestrator().celery
    app._pool = None
    app.amqp._producer_pool = None


def test_embedded_settings(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, inline_output_limit=5)
    assert settings.embedded and settings.imports == []
    assert settings.database_url == f"sqlite:///{tmp_path / 'orchestration.db'}"
    assert settings.inline_output_limit == 5 and settings.result_backend is None


def test_orchestrator_fixture_is_fresh_and_throwaway(orchestrator: Orchestrator,
                                                     tmp_path: Path) -> None:
    assert orchestrator is not default_orchestrator()
    assert orchestrator.settings.database_url == f"sqlite:///{tmp_path / 'orchestration.db'}"
    assert orchestrator.workflows == {} and orchestrator.store.list_runs() == []


def test_embedded_orchestrator_without_a_directory_cleans_up() -> None:
    with embedded_orchestrator() as orch:
        database = Path(make_url(orch.settings.database_url).database or "")
        assert orch.store.list_runs() == []
        assert database.exists()
    assert not database.exists()


def test_embedded_default_repoints_the_default_orchestrator(
        restore_broker_pools: None, embedded_default: Orchestrator, tmp_path: Path) -> None:
    assert embedded_default is default_orchestrator()
    assert embedded_default.settings.embedded
    assert embedded_default.settings.database_url == f"sqlite:///{tmp_path / 'orchestration.db'}"
    assert embedded_default.store.list_runs() == []


def test_embedded_default_runs_module_level_workflows(restore_broker_pools: None,
                                                      embedded_default: Orchestrator) -> None:
    wf = Workflow(f"module_level_{uuid.uuid4().hex[:8]}")  # binds to the default orchestrator

    @wf.task
    def echo(x: int) -> int:
        return x

    assert wf.run(x=1, timeout=5).outputs == {"echo": 1}
