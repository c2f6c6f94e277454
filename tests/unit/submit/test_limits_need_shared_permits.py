"""A limited workflow on a broker without shared Redis is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration import Workflow
from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from orchestration.errors import ConfigurationError


def test_submit_without_shared_permits_writes_nothing(tmp_path: Path) -> None:
    orch = Orchestrator(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//",
                                 result_backend="redis://127.0.0.1:6379/0",
                                 database_url=f"sqlite:///{tmp_path / 'r.db'}",
                                 imports=[], pipelines=None))
    try:
        wf = Workflow("needs_permits", app=orch, max_parallel=2)

        @wf.task
        def step(n: int) -> int:
            return n

        with pytest.raises(ConfigurationError, match="max_parallel needs permits shared by "
                                                     "every worker: set ORCH_REDIS_URL"):
            wf.submit(n=1)
        with pytest.raises(ConfigurationError, match="set ORCH_REDIS_URL"):
            wf.submit_many([{"n": 1}])
        assert orch.store.list_runs() == []
    finally:
        orch.shutdown()
