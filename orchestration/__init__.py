"""An AI-workflow orchestration backend on Celery.

Declare a workflow as a DAG of Python steps, submit runs from application code, and
let Celery workers on per-model queues execute them with retries, timeouts, fallbacks
and durable state in the results database.
"""

from orchestration.api import approve, cancel, emit, get_run, list_runs, reconcile, resume
from orchestration.app import Orchestrator, default_orchestrator
from orchestration.core.results import RunHandle, RunResult, RunSummary, StepRecord
from orchestration.core.status import RunStatus, StepStatus
from orchestration.define.adaptive import adaptive
from orchestration.define.memory import Memory
from orchestration.define.policies import Backoff
from orchestration.define.step import Step
from orchestration.define.workflow import Workflow
from orchestration.errors import (
    BatchOutputMismatch,
    BreakerOpen,
    BudgetExceeded,
    ConfigurationError,
    ErrorKind,
    GateFailed,
    InputTimeout,
    InvalidInput,
    InvalidModelOutput,
    LowConfidence,
    NonRetryableError,
    NotResumable,
    NoWaitingInput,
    OrchestrationError,
    OutputNotSerializable,
    PipelineError,
    Problem,
    ProviderError,
    RateLimited,
    ResultsDatabaseUnavailable,
    RetrievalError,
    RunNotFound,
    SchemaNotCurrent,
    StepAborted,
    StepError,
    StepTimeout,
    SubmitFailed,
    WaitTimeout,
    WorkflowDefinitionError,
)
from orchestration.events.outcomes import EventOutcome
from orchestration.execute.context import StepContext
from orchestration.pipelines import load_pipeline, load_pipelines

__all__ = [
    # defining and running workflows
    "Backoff",
    "Memory",
    "Orchestrator",
    "Step",
    "StepContext",
    "Workflow",
    "adaptive",
    "default_orchestrator",
    # declared pipelines (JSON/YAML files)
    "load_pipeline",
    "load_pipelines",
    # reading runs back
    "RunHandle",
    "RunResult",
    "RunStatus",
    "RunSummary",
    "StepRecord",
    "StepStatus",
    "approve",
    "cancel",
    "get_run",
    "list_runs",
    "reconcile",
    "resume",
    # events: what starts runs besides submit
    "EventOutcome",
    "emit",
    # errors: the root, then what defining, submitting and operating runs raise
    "OrchestrationError",
    "ConfigurationError",
    "SchemaNotCurrent",
    "WorkflowDefinitionError",
    "PipelineError",
    "Problem",
    "InvalidInput",
    "SubmitFailed",
    "RunNotFound",
    "NotResumable",
    "NoWaitingInput",
    "ResultsDatabaseUnavailable",
    "RetrievalError",
    "WaitTimeout",
    # errors: what a step attempt fails with (recorded on the step)
    "StepError",
    "StepTimeout",
    "StepAborted",
    "NonRetryableError",
    "OutputNotSerializable",
    "BatchOutputMismatch",
    "InputTimeout",
    "GateFailed",
    "LowConfidence",
    "InvalidModelOutput",
    "BudgetExceeded",
    "RateLimited",
    "ProviderError",
    "BreakerOpen",
    "ErrorKind",
]
