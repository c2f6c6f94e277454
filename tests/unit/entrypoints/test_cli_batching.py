"""``orchestrate show`` says when a run's step waits in a batch (``batch_size=``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import orchestration.define.host as host_module
from orchestration import RunStatus, Workflow
from orchestration.cli import main
from orchestration.testing import embedded_orchestrator
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def waiting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(tmp_path_factory.mktemp("cli-batching")) as app:
        flow = Workflow("cli_batched", inputs=["n"], app=app)

        @flow.task(batch_size=5, batch_wait=3600)
        def score(n: list[int]) -> list[int]:
            return n

        handles = [flow.submit(n=n) for n in (1, 2)]
        for handle in handles:
            wait_until(lambda h=handle: app.store.get_run(h.run_id).status
                       is RunStatus.WAITING, timeout=20, what="the element buffered")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ORCH_DATABASE_URL", app.settings.database_url)
            patch.setenv("ORCH_IMPORTS", "")
            patch.setenv("COLUMNS", "250")
            patch.delenv("ORCH_BROKER_URL", raising=False)
            patch.setattr(host_module, "_default", None)  # rebuilt from the environment
            yield SimpleNamespace(run_id=handles[0].run_id)
            built = host_module._default
            if built is not None:
                built.shutdown()


def test_show_says_the_step_waits_for_its_batch(waiting: SimpleNamespace) -> None:
    result = CliRunner().invoke(main, ["show", waiting.run_id])
    assert result.exit_code == 0, result.output
    assert "waiting" in result.output.splitlines()[0]
    assert "batched: step score waits for its batch (2 element(s) buffered)" in result.output
    shown = json.loads(CliRunner().invoke(main, ["show", waiting.run_id, "--json"]).output)
    assert shown["batch_elements"] == [{"step": "score", "status": "waiting", "buffered": 2}]
    assert shown["steps"]["score"]["status"] == "waiting"
