"""``ORCH_METRICS_PORT`` on the embedded default (``orchestration/metrics.py`` says "a
threads-pool or embedded worker can serve its own registry with ORCH_METRICS_PORT").

Runs in a subprocess: the process's default orchestrator is built from the environment
once, so the setting must be there before anything imports the engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import child_env, free_port

SCRIPT = textwrap.dedent("""
    import sys
    import httpx
    from orchestration import Workflow

    flow = Workflow("metrics_embedded")

    @flow.task
    def one(x: int) -> int:
        return x

    run = flow.run(x=1, timeout=30)
    print("run", run.status.value)
    try:
        text = httpx.get(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).text
    except httpx.HTTPError as exc:
        print(f"no metrics endpoint: {exc!r}")
        sys.exit(3)
    print(text)
""")


def test_the_embedded_default_serves_metrics_on_orch_metrics_port(tmp_path: Path) -> None:
    port = free_port()
    env = child_env({k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
                    ORCH_DATABASE_URL=f"sqlite:///{tmp_path / 'metrics.db'}",
                    ORCH_METRICS_PORT=str(port), ORCH_LOG_LEVEL="ERROR")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(port)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=90)
    assert "run succeeded" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    exposition = done.stdout.split("\n", 1)[1]
    outcomes = {(s.labels["workflow"], s.labels["step"], s.labels["status"]): s.value
                for family in text_string_to_metric_families(exposition)
                for s in family.samples if s.name == "orchestration_step_outcomes_total"}
    assert outcomes[("metrics_embedded", "one", "succeeded")] == 1
