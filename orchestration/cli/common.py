"""What every ``orchestrate`` command shares: the console, status styles, the orchestrator."""

from __future__ import annotations

import importlib
import sys
import time

from rich.console import Console
from rich.text import Text

from orchestration.app import Orchestrator, default_orchestrator
from orchestration.cli.errors import SetupFailed, debugging, remember_database_url
from orchestration.core.status import RunStatus, StepStatus

# Wide enough for run ids when piped (rich assumes 80 columns without a terminal).
console = Console(width=None if sys.stdout.isatty() else 160)
# Every status has a style; data (names, errors) is printed as rich Text, never as markup.
STATUS_STYLE = {
    StepStatus.SUCCEEDED: "green", StepStatus.FALLBACK: "yellow", StepStatus.FAILED: "red",
    StepStatus.SKIPPED: "dim", StepStatus.RUNNING: "cyan", StepStatus.RETRYING: "magenta",
    StepStatus.PENDING: "dim", StepStatus.WAITING: "blue", StepStatus.CANCELLED: "dim red",
}

RUN_STYLE = {RunStatus.SUCCEEDED: "green", RunStatus.FAILED: "red",
             RunStatus.CANCELLED: "dim red", RunStatus.WAITING: "blue"}


def orchestrator_for_cli(load_workflows: bool = False, *,
                         pipelines: bool = True) -> Orchestrator:
    """The default orchestrator (its workflow modules imported, and unless ``pipelines``
    is false its pipeline folder loaded, if asked); setup errors become one line naming
    the problem."""
    try:
        orchestrator = default_orchestrator()
        remember_database_url(orchestrator.settings.database_url)
        if load_workflows:
            for module in orchestrator.settings.imports:
                importlib.import_module(module)
            if pipelines:
                orchestrator.load_pipelines()
    except Exception as exc:
        # Settings, catalogue and workflow modules: one line naming the problem, even where
        # a command turns OrchestrationError into its own message.
        if debugging():
            raise
        raise SetupFailed(exc) from exc
    return orchestrator




def settle_embedded(orchestrator: Orchestrator, run_ids: list[str],
                    timeout: float) -> None:
    """On the embedded default this process is the worker: stay until the runs settle.

    A run started here would otherwise stop with the command and wait for the next
    process's reconciler. Returns when every run is terminal or waiting for a person (or
    after ``timeout`` seconds, saying which runs are still going); prints each status.
    """
    if not orchestrator.settings.embedded or not run_ids:
        return
    deadline = time.monotonic() + timeout
    pending = list(dict.fromkeys(run_ids))
    interval = 0.01
    while pending:
        for run_id in list(pending):
            status = orchestrator.store.run_status(run_id)
            if status.is_terminal or status is RunStatus.WAITING:
                console.print(Text(f"run {run_id}: {status.value}",
                                   style=RUN_STYLE.get(status, "")))
                pending.remove(run_id)
        if not pending:
            return
        if time.monotonic() >= deadline:
            console.print(Text(f"still running after {timeout:g} s (embedded default; the "
                               f"next orchestrate command's reconciler picks them up): "
                               f"{', '.join(pending)}", style="yellow"))
            return
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)
