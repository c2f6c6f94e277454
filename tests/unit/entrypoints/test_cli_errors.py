"""``orchestrate`` reports a bad setup in one line (exit code 2); ``--debug`` shows the traceback.

Every command is run against a bad database URL, an unreachable database (nothing
listens on the port; a SQLite file under a regular file) and a bad model catalogue.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.exc import ArgumentError, OperationalError

import orchestration.define.host as host_module
from orchestration import Workflow
from orchestration.app import Orchestrator
from orchestration.cli import main
from orchestration.core.settings import Settings
from orchestration.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[3]
RUN = "0f8fad5b-d9cb-469f-a165-70867728950e"
# Commands that open the results DB, with arguments.
DB_COMMANDS = [["db", "upgrade"], ["runs"], ["show", RUN], ["show", RUN, "--json"],
               ["approve", RUN], ["resume", RUN], ["reconcile"], ["cancel", RUN],
               ["stats", "wf"]]
# Commands that only need the orchestrator (its catalogue) to be built.
ALL_COMMANDS = [*DB_COMMANDS, ["queues"], ["graph", "wf"], ["metrics", "--port", "1"]]
PASSWORD = "s3cretpw"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings from the environment, a fresh default orchestrator per command."""
    monkeypatch.setenv("ORCH_IMPORTS", "")
    monkeypatch.delenv("ORCH_BROKER_URL", raising=False)
    monkeypatch.delenv("ORCH_MODELS_FILE", raising=False)
    monkeypatch.setattr(host_module, "_default", None)
    yield monkeypatch
    built = host_module._default
    if built is not None:
        built.shutdown()


def invoke(env: pytest.MonkeyPatch, *args: str) -> Result:
    env.setattr(host_module, "_default", None)
    return CliRunner().invoke(main, list(args))


def assert_one_line(result: Result, *expected: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and "--debug" in lines[0], lines[0]
    assert "Traceback" not in result.output
    for text in expected:
        assert text in lines[0], lines[0]
    assert PASSWORD not in result.output


BAD_URLS = [
    ("nonsense", "bad results database URL"),
    ("postgresqlx://u@127.0.0.1/x", "bad results database URL"),
    (f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x",
     "cannot use the results database postgresql+psycopg://u:***@127.0.0.1:1/x"),
]


@pytest.mark.parametrize("command", DB_COMMANDS, ids=" ".join)
@pytest.mark.parametrize(("url", "expected"), BAD_URLS, ids=["unparseable", "no-driver",
                                                            "unreachable"])
def test_a_bad_or_unreachable_database_is_one_line(env: pytest.MonkeyPatch, command: list[str],
                                                   url: str, expected: str) -> None:
    env.setenv("ORCH_DATABASE_URL", url)
    assert_one_line(invoke(env, *command), expected, "ORCH_DATABASE_URL")


@pytest.mark.parametrize(("url", "expected"), BAD_URLS, ids=["unparseable", "no-driver",
                                                            "unreachable"])
def test_submit_to_a_bad_or_unreachable_database_is_one_line(
        env: pytest.MonkeyPatch, url: str, expected: str) -> None:
    orchestrator = Orchestrator(Settings(database_url=url, imports=[]))
    flow = Workflow("cli_errors_wf", app=orchestrator)

    @flow.task
    def echo(text: str) -> str:
        return text

    env.setattr(host_module, "_default", orchestrator)
    result = CliRunner().invoke(main, ["submit", "cli_errors_wf", "--inputs", '{"text": "x"}'])
    assert_one_line(result, expected, "ORCH_DATABASE_URL")


def test_an_unopenable_sqlite_file_is_one_line(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env.setenv("ORCH_DATABASE_URL", f"sqlite:///{blocker}/sub/x.db")
    assert_one_line(invoke(env, "runs"), str(blocker))


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_a_bad_catalogue_is_one_line(env: pytest.MonkeyPatch, tmp_path: Path,
                                     command: list[str]) -> None:
    catalogue = tmp_path / "models.yaml"
    catalogue.write_text("models:\n  m1:\n    provider: nowhere\n    price: [1, 2\n")
    env.setenv("ORCH_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    env.setenv("ORCH_MODELS_FILE", str(catalogue))
    assert_one_line(invoke(env, *command), f"model catalogue {catalogue}")


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_invalid_settings_are_one_line(env: pytest.MonkeyPatch, command: list[str]) -> None:
    env.setenv("ORCH_MAX_CRASHES", "0")
    assert_one_line(invoke(env, *command), "invalid settings: ORCH_MAX_CRASHES")


def test_a_missing_workflow_module_is_one_line(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("ORCH_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    env.setenv("ORCH_IMPORTS", "no_such_module_here")
    assert_one_line(invoke(env, "submit", "x"), "ORCH_IMPORTS", "no_such_module_here")


@pytest.mark.parametrize(("url", "raised"), [
    ("nonsense", ArgumentError), ("postgresql+psycopg://u@127.0.0.1:1/x", OperationalError)])
def test_debug_lets_the_error_through(env: pytest.MonkeyPatch, url: str,
                                      raised: type[Exception]) -> None:
    env.setenv("ORCH_DATABASE_URL", url)
    result = invoke(env, "--debug", "runs")
    assert isinstance(result.exception, raised), repr(result.exception)


def test_debug_lets_a_catalogue_error_through(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("ORCH_MODELS_FILE", str(tmp_path / "missing.yaml"))
    result = invoke(env, "--debug", "show", RUN)
    assert isinstance(result.exception, ConfigurationError), repr(result.exception)


def test_the_process_prints_one_line_or_with_debug_the_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ORCH_IMPORTS": "", "PYTHONPATH": str(ROOT),
           "ORCH_DATABASE_URL": f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x"}
    command = [sys.executable, "-m", "orchestration.cli"]
    quiet = subprocess.run([*command, "runs"], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert quiet.returncode == 2, quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) == 1, quiet.stderr
    assert "cannot use the results database" in quiet.stderr and PASSWORD not in quiet.stderr
    loud = subprocess.run([*command, "--debug", "runs"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert loud.returncode != 0
    assert "Traceback (most recent call last)" in loud.stderr
    assert "sqlalchemy.exc.OperationalError" in loud.stderr
