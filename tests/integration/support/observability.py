"""Helpers of the observability tests: the ``orchestrate`` CLI and servers as subprocesses,
Prometheus scrapes, a text dump of the whole results DB, the fake-LLM model catalogue.

Every subprocess gets the test process's ``ORCH_*`` environment (set by the integration
conftest) with the observability workflows (``workflows/observability.py``) added to
``ORCH_IMPORTS``, so the CLI, the exporter and the workers know the same workflows as the
test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import MetaData, create_engine, select

from tests.support import processes
from tests.support.processes import ORCHESTRATE as ORCHESTRATE  # tests run servers with it
from tests.support.processes import ROOT, child_env

OBS_MODULE = "tests.integration.support.workflows.observability"
FAKE_KEY_ENV = "OBS_FAKE_LLM_KEY"


def obs_env(**extra: str) -> dict[str, str]:
    """The test process's environment, plus the observability workflows and ``extra``."""
    return child_env(imports=(OBS_MODULE,), **extra)


def orchestrate(*args: str, env: dict[str, str] | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``orchestrate ARGS`` to completion; fail with its output if it exits non-zero."""
    return processes.orchestrate(*args, env=env or obs_env(), check=check)


@dataclass
class Server:
    """A long-running subprocess (exporter, Flower) with its log file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def background(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[Server]:
    """Run ``command`` in its own session until the block ends (SIGTERM, then SIGKILL)."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, log_path)
    try:
        yield server
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for_http(url: str, server: Server, *, timeout: float, auth: Any = None,
                  what: str = "the server") -> httpx.Response:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    last: str = "no answer yet"
    while True:
        if server.process.poll() is not None:
            raise AssertionError(f"{what} exited with {server.process.returncode}; "
                                 f"log:\n{server.log()[-4000:]}")
        try:
            response = httpx.get(url, auth=auth, timeout=2.0)
            if response.status_code == 200:
                return response
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not answer 200 at {url} within {timeout:g} s "
                                 f"({last}); log:\n{server.log()[-4000:]}")
        time.sleep(0.1)


# -- Prometheus ----------------------------------------------------------------------------

Sample = tuple[str, dict[str, str], float]


def scrape(url: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition: ``(name, labels, value)``."""
    response = httpx.get(url, timeout=5.0)
    response.raise_for_status()
    return [(sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(v for n, sample_labels, v in samples
               if n == name and all(sample_labels.get(k) == want for k, want in labels.items()))


def has(samples: list[Sample], name: str, **labels: str) -> bool:
    """True if some sample is named ``name`` and carries ``labels``."""
    return any(n == name and all(sample_labels.get(k) == want for k, want in labels.items())
               for n, sample_labels, _ in samples)


# -- the results DB as text ----------------------------------------------------------------


def dump_database(url: str) -> dict[str, str]:
    """Every row of every table of the database at ``url``, as text, by table name."""
    engine = create_engine(url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        dumped: dict[str, str] = {}
        with engine.connect() as conn:
            for name, table in sorted(metadata.tables.items()):
                rows = conn.execute(select(table)).all()
                # json.dumps with ensure_ascii=False keeps strings as written; repr as a
                # second view catches anything json would escape.
                dumped[name] = "\n".join(
                    json.dumps([str(cell) for cell in row], ensure_ascii=False) + repr(tuple(row))
                    for row in rows)
        return dumped
    finally:
        engine.dispose()


# -- the fake LLM catalogue ----------------------------------------------------------------

# Prices of `priced`: 100 prompt + 50 completion tokens at $0.01 / $0.02 per 1k = $0.002.
PRICED_TOKENS = (100, 50)
PRICED_COST = (100 * 0.01 + 50 * 0.02) / 1000


def fake_catalogue(base_url: str) -> dict[str, Any]:
    """Models on the fake LLM server: no call retries, breakers that never open."""
    def model(**options: Any) -> dict[str, Any]:
        return {"provider": "fake", "retries": 0,
                "breaker": {"fail_max": 10_000, "reset_timeout": 60}, **options}

    return {
        "providers": {"fake": {"kind": "openai", "base_url": base_url,
                               "api_key_env": FAKE_KEY_ENV}},
        "models": {
            "coin": model(),
            "coin-backed": model(fallbacks=["backup"]),
            "backup": model(),
            "priced": model(input_cost_per_1k=0.01, output_cost_per_1k=0.02),
        },
        "default_model": "backup",
    }


def write_catalogue(directory: Path, base_url: str) -> Path:
    """Write :func:`fake_catalogue` (JSON is YAML) and return its path."""
    path = directory / "models.yaml"
    path.write_text(json.dumps(fake_catalogue(base_url), indent=2))
    return path
