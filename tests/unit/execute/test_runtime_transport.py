"""What crosses the broker: large values by reference, long retry waits handed back to it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from orchestration import Backoff, RunStatus, StepContext, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.testing import embedded_orchestrator
from tests.support.flows import Flows

INLINE_LIMIT = 64
BIG = "y" * 1000


flow = Flows()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """Small inline limit; every retry wait goes back through the broker."""
    with embedded_orchestrator(tmp_path_factory.mktemp("transport"),
                               inline_output_limit=INLINE_LIMIT, inline_retry_limit=0.0,
                               default_queue="transport") as orch:
        yield orch


@pytest.fixture(scope="module")
def flows(app: Orchestrator) -> dict[str, SimpleNamespace]:
    return flow.build(app)


@flow
def large(app: Orchestrator) -> SimpleNamespace:
    wf = Workflow("large", app=app)

    @wf.task
    def transcript(call_id: int) -> str:
        return BIG

    @wf.task
    def measure(transcript: str, document: str) -> list[int]:
        return [len(transcript), len(document)]

    @wf.task
    def head(transcript: str) -> str:
        return transcript[:3]

    return SimpleNamespace(wf=wf)


def _message_text(published: list[tuple[str, Any]]) -> str:
    return json.dumps([body for _, body in published], default=str)


def test_large_values_travel_by_reference(flows: dict[str, SimpleNamespace], app: Orchestrator,
                                          published: list[tuple[str, Any]]) -> None:
    store = app.store
    with mock.patch.object(store, "load_output", wraps=store.load_output) as load_output, \
            mock.patch.object(store, "load_inputs", wraps=store.load_inputs) as load_inputs:
        result = flows["large"].wf.run(call_id=1, document="d" * 500, timeout=10)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["measure"] == [1000, 500] and result.outputs["head"] == "yyy"
    assert result.outputs["transcript"] == BIG  # stored once, in the results DB
    loaded = {call.args for call in load_output.call_args_list}
    assert loaded == {(result.run_id, "transcript")}
    assert load_inputs.call_count >= 1
    text = _message_text(published)
    assert published, "no message was observed"
    assert "y" * 100 not in text and "d" * 100 not in text  # never crossed the broker


def test_small_values_travel_inline(flows: dict[str, SimpleNamespace], app: Orchestrator,
                                    published: list[tuple[str, Any]]) -> None:
    store = app.store
    with mock.patch.object(store, "load_output", wraps=store.load_output) as load_output:
        result = flows["large"].wf.run(call_id=2, document="tiny", timeout=10)
    assert result.outputs["measure"] == [1000, 4]
    assert "tiny" in _message_text(published)
    assert all(call.args[1] == "transcript" for call in load_output.call_args_list)


@flow
def rescheduled(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(attempts=[], wf=Workflow("rescheduled", app=app))

    @ns.wf.task(retries=2, backoff=Backoff(initial=0.05, maximum=0.05, jitter=0.0))
    def flaky(x: int, ctx: StepContext) -> int:
        ns.attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("rate limited")
        return x * 3

    @ns.wf.task
    def after(flaky: int) -> int:
        return flaky + 1

    return ns


def test_long_retry_wait_goes_back_through_the_broker(flows: dict[str, SimpleNamespace],
                                                      published: list[tuple[str, Any]]) -> None:
    ns = flows["rescheduled"]
    result = ns.wf.run(x=2, timeout=10)
    step = result.steps["flaky"]
    assert result.status is RunStatus.SUCCEEDED and result.outputs["after"] == 7
    assert ns.attempts == [1, 2]
    assert (step.status, step.attempts) == (StepStatus.SUCCEEDED, 2)
    assert step.deliveries >= 2
    assert [a["status"] for a in step.attempt_log] == ["failed", "succeeded"]
    assert [name for name, _ in published].count("rescheduled.flaky") >= 2
