"""``emit`` on the embedded default: the run executes in this process, at most once per id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import kombu.pools
import pytest

from orchestration import (
    EventOutcome,
    InvalidInput,
    RunStatus,
    Workflow,
    default_orchestrator,
    emit,
    get_run,
)
from orchestration.app import Orchestrator
from orchestration.core.results import RunHandle
from orchestration.events import Outcome


@pytest.fixture
def restore_broker_pools() -> Iterator[None]:
    """Undo what re-pointing the default breaks (kombu's process-wide memory:// pool), as
    tests/unit/entrypoints/test_testing.py does; requested before ``embedded_default``."""
    yield
    kombu.pools.reset()
    app = default_orchestrator().celery
    app._pool = None
    app.amqp._producer_pool = None


def test_emit_starts_a_run_on_the_embedded_default(restore_broker_pools: None,
                                                   embedded_default: Orchestrator) -> None:
    suffix = uuid.uuid4().hex[:8]
    wf = Workflow(f"emitted_{suffix}", inputs=["text"])  # binds to the default orchestrator

    @wf.task
    def shout(text: str) -> str:
        return text.upper()

    event = f"greeting.{suffix}"
    wf.on_event(event, inputs={"text": "$.text"})
    [outcome] = emit(event, {"text": "hello"}, event_id="g-1")
    assert isinstance(outcome, EventOutcome) and outcome.outcome is Outcome.STARTED
    result = RunHandle(outcome.run_id or "", embedded_default.store).wait(30)
    assert (result.status, result.outputs) == (RunStatus.SUCCEEDED, {"shout": "HELLO"})
    [again] = emit(event, {"text": "hello again"}, event_id="g-1")
    assert (again.outcome, again.run_id) == (Outcome.DUPLICATE, outcome.run_id)
    assert get_run(outcome.run_id or "").inputs == {"text": "hello"}
    with pytest.raises(InvalidInput, match="event_id must be"):
        emit(event, {"text": "x"}, event_id="")
