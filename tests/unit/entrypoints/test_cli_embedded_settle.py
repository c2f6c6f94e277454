"""On the embedded default the ``orchestrate`` process is the worker: ``submit`` and
``emit`` stay until the runs they started settle, instead of leaving them pending."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[3]
TICKET = {"ticket": {"description": "I was charged twice on my invoice, billing is wrong"}}


def orchestrate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("ORCH_") or key == "ORCH_DEPLOYMENT"}
    env.update(ORCH_DATABASE_URL=f"sqlite:///{tmp_path / 'results.db'}", ORCH_IMPORTS="",
               ORCH_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240, check=False)


def run_statuses(tmp_path: Path) -> dict[str, str]:
    engine = create_engine(f"sqlite:///{tmp_path / 'results.db'}")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT workflow, status FROM runs")).all()
    engine.dispose()
    return {workflow: status for workflow, status in rows}


def test_emit_stays_until_the_started_runs_finish(tmp_path: Path) -> None:
    done = orchestrate(tmp_path, "emit", "zendesk.ticket.created", "--payload",
                       json.dumps(TICKET), "--event-id", "zd-settle")
    assert done.returncode == 0, done.stderr
    assert ": succeeded" in done.stdout, done.stdout
    # The routed sub-pipeline ran as a child run in the same process.
    assert run_statuses(tmp_path) == {"customer_support_orchestrator": "succeeded",
                                      "billing_agent_orchestrator": "succeeded"}


def test_submit_stays_until_the_run_finishes(tmp_path: Path) -> None:
    done = orchestrate(tmp_path, "submit", "customer_support_orchestrator", "--inputs",
                       json.dumps({"text": "the app crashes with an error on login"}))
    assert done.returncode == 0, done.stderr
    assert ": succeeded" in done.stdout, done.stdout
    assert run_statuses(tmp_path)["customer_support_orchestrator"] == "succeeded"
