"""max_parallel, concurrency_key, batch_size and batch_wait are checked where declared."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import Workflow, WorkflowDefinitionError
from orchestration.app import Orchestrator
from orchestration.define.throughput import DEFAULT_BATCH_WAIT, Limit


def _declare(wf: Workflow, **options: Any) -> None:
    @wf.task(**options)
    def step(text: str, tenant_id: str = "") -> str:
        return text


def test_workflow_limit_is_kept_and_its_key_becomes_a_required_input(
        orchestrator: Orchestrator) -> None:
    wf = Workflow("limited", app=orchestrator, max_parallel=3, concurrency_key="tenant")
    _declare(wf)
    assert wf.limit == Limit(3, "tenant")
    assert "tenant" in wf.validate().required_inputs


def test_step_limit_and_key(orchestrator: Orchestrator) -> None:
    wf = Workflow("step_limited", app=orchestrator)
    _declare(wf, max_parallel=2, concurrency_key="tenant_id")
    assert wf.validate().steps["step"].spec.limit == Limit(2, "tenant_id")


@pytest.mark.parametrize(("options", "message"), [
    ({"max_parallel": 0}, "max_parallel must be a whole number >= 1, got 0"),
    ({"max_parallel": True}, "max_parallel must be a whole number"),
    ({"max_parallel": 2.5}, "max_parallel must be a whole number"),
    ({"concurrency_key": "tenant_id"}, "concurrency_key='tenant_id' partitions a "
                                       "max_parallel limit, and max_parallel is not set"),
    ({"max_parallel": 2, "concurrency_key": "tenant-id"}, "must be a Python identifier"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
    ({"batch_wait": 1.0}, "batch_wait=1.0 is how long a batch waits to fill, and batch_size "
                          "is not set"),
    ({"batch_size": 4, "batch_wait": -1}, r"batch_wait must be seconds in \[0, 3600\]"),
    ({"batch_size": 4, "batch_wait": float("nan")}, "batch_wait must be seconds"),
    ({"batch_size": 4, "cache": True}, "batch_size and cache= cannot be combined"),
])
def test_bad_step_options_name_the_culprit(orchestrator: Orchestrator, options: dict[str, Any],
                                           message: str) -> None:
    wf = Workflow("bad_options", app=orchestrator)
    with pytest.raises(WorkflowDefinitionError, match=message):
        _declare(wf, **options)


def test_batch_wait_defaults(orchestrator: Orchestrator) -> None:
    wf = Workflow("batched", app=orchestrator)
    _declare(wf, batch_size=10)
    spec = wf.validate().steps["step"].spec
    assert (spec.batch_size, spec.batch_wait) == (10, DEFAULT_BATCH_WAIT)


def test_step_key_must_be_a_parameter_or_input(orchestrator: Orchestrator) -> None:
    wf = Workflow("unkeyed", app=orchestrator)
    _declare(wf, max_parallel=2, concurrency_key="customer")
    with pytest.raises(WorkflowDefinitionError,
                       match="concurrency_key='customer' is neither a parameter of the step "
                             "nor an input of the workflow"):
        wf.validate()


def test_workflow_key_must_be_a_declared_input(orchestrator: Orchestrator) -> None:
    with pytest.raises(WorkflowDefinitionError,
                       match=r"concurrency_key='tenant' must be one of its inputs \(text\)"):
        Workflow("undeclared", app=orchestrator, inputs=["text"], max_parallel=2,
                 concurrency_key="tenant")
    with pytest.raises(WorkflowDefinitionError, match="max_parallel must be a whole number"):
        Workflow("zero", app=orchestrator, max_parallel=-1)
