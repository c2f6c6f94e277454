"""The models page: each catalogue model's breaker (state, failures, opened at) and its
latest failed calls, as attempts recorded them; the queues page: depths per queue."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from orchestration.core.clock import utcnow
from orchestration.errors import ProviderError
from orchestration.store.repository import AttemptRecord
from tests.unit.serve.dashboard_support import Client, bearer, dashboard, write_run

TOKEN = {"serve_token": "dash-t0ken-for-tests"}


def _fail() -> None:
    raise ProviderError("upstream 503", status=503)


CATALOGUE = """
providers:
  local: {kind: local}
models:
  alpha: {provider: local, input_cost_per_1k: 0.001, output_cost_per_1k: 0.002}
  beta: {provider: local, input_cost_per_1k: 0.001, output_cost_per_1k: 0.002}
"""


def test_an_open_breaker_and_recent_failed_calls_are_shown(tmp_path: Path) -> None:
    catalogue = tmp_path / "models.yaml"
    catalogue.write_text(CATALOGUE)
    app, orchestrator = dashboard(tmp_path, models_file=catalogue, **TOKEN)
    models = sorted(orchestrator.catalogue.models)
    assert models == ["alpha", "beta"]
    tripped = models[0]
    breaker = orchestrator.resilience.breakers.get(tripped)
    for _ in range(breaker.fail_max):
        with pytest.raises(ProviderError):
            breaker.call(_fail)
    run_id = write_run(orchestrator, "flow")
    now = utcnow()
    orchestrator.store.record_attempts(run_id, "only", [AttemptRecord(
        2, "succeeded", now, now + timedelta(milliseconds=3), calls=[
            {"model": tripped, "ok": False, "error": "HTTP 503 from the provider",
             "error_kind": "model_unavailable", "latency_ms": 1.0},
            {"model": models[1], "ok": True, "latency_ms": 1.0}])])

    view = Client(app).get("/api/breakers", headers=bearer()).json()
    assert view["shared"] is False
    by_model = {m["model"]: m for m in view["models"]}
    assert set(by_model) == set(models)
    assert by_model[tripped]["state"] == "open"
    assert by_model[tripped]["failures"] == breaker.fail_max
    assert by_model[tripped]["opened_at"] is not None
    assert [(f["run_id"], f["step"], f["error_kind"]) for f in
            by_model[tripped]["recent_failures"]] == [(run_id, "only", "model_unavailable")]
    assert by_model[models[1]]["state"] == "closed"
    assert by_model[models[1]]["recent_failures"] == []

    page = Client(app).get("/models", headers=bearer()).text
    assert f'data-model="{tripped}" data-state="open"' in page
    assert "HTTP 503 from the provider" in page


def test_queue_depths_come_from_the_broker(tmp_path: Path) -> None:
    app, _ = dashboard(tmp_path, **TOKEN)
    view = Client(app).get("/api/queues", headers=bearer()).json()
    assert view["problem"] is None
    assert [q["queue"] for q in view["queues"]] == ["default"]  # no workflow here
    assert 'data-queue="default"' in Client(app).get("/queues", headers=bearer()).text
