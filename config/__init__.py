"""Deployment configuration: the workflow modules workers import, the model catalogue,
the pipeline files, queues and Celery overrides.

The engine reads ``WORKFLOW_MODULES``, ``MODELS_FILE`` and ``PIPELINES`` from the module
named by ``ORCH_DEPLOYMENT`` (this package by default) when ``ORCH_IMPORTS`` /
``ORCH_MODELS_FILE`` / ``ORCH_PIPELINES`` are not set; it names no business module itself.
"""

from pathlib import Path

#: Workflow modules every worker imports (``ORCH_IMPORTS`` overrides it).
WORKFLOW_MODULES = [
    "tasks.support.workflow",
    "tasks.support.routing",
    "tasks.support.intents",
    "tasks.fraud.workflow",
    "tasks.content.workflow",
    "tasks.rag.workflow",
    "tasks.agent.workflow",
    "tasks.recruitment.workflow",
]

#: The model catalogue: providers, prices, fallbacks (``ORCH_MODELS_FILE`` overrides it).
MODELS_FILE = Path(__file__).resolve().parent / "models.yaml"

#: The pipeline files every worker and the CLI load (``ORCH_PIPELINES`` overrides it).
PIPELINES = Path(__file__).resolve().parent.parent / "tasks" / "pipelines"
