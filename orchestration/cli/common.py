"""What every ``orchestrate`` command shares: the console, status styles, the orchestrator."""

from __future__ import annotations

import importlib
import sys

from rich.console import Console

from orchestration.app import Orchestrator, default_orchestrator
from orchestration.cli.errors import SetupFailed, debugging, remember_database_url
from orchestration.core.status import StepStatus

# Wide enough for run ids when piped (rich assumes 80 columns without a terminal).
console = Console(width=None if sys.stdout.isatty() else 160)
# Every status has a style; data (names, errors) is printed as rich Text, never as markup.
STATUS_STYLE = {
    StepStatus.SUCCEEDED: "green", StepStatus.FALLBACK: "yellow", StepStatus.FAILED: "red",
    StepStatus.SKIPPED: "dim", StepStatus.RUNNING: "cyan", StepStatus.RETRYING: "magenta",
    StepStatus.PENDING: "dim", StepStatus.WAITING: "blue", StepStatus.CANCELLED: "dim red",
}


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


