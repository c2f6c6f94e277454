"""Run priority: checked before anything is written, mapped per broker, carried by every
message of the run (steps, the chord's join, finalize, map chunks, a child run).

The Redis and AMQP orchestrators here connect to nothing: they build canvases only.
Messages really published are seen on the embedded default (which ignores priority on
delivery, but publishes the property like the others).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import signals
from celery.canvas import Signature, _chain, _chord, group, maybe_signature
from sqlalchemy import text

from orchestration import (
    InvalidInput,
    PipelineError,
    StepContext,
    Workflow,
    WorkflowDefinitionError,
    emit,
    load_pipeline,
)
from orchestration.app import Orchestrator
from orchestration.core.priority import check_priority, message_priority
from orchestration.core.settings import Settings
from orchestration.define.triggers import make_trigger
from orchestration.submit.submission import canvas as run_canvas
from orchestration.testing import embedded_orchestrator
from orchestration.worker.celery_config import celery_config
from tests.support.polling import wait_until

REDIS = "redis://127.0.0.1:1/0"
AMQP = "amqp://guest:guest@127.0.0.1:1//"


def test_a_priority_is_an_int_from_0_to_9() -> None:
    assert [check_priority(value, "w") for value in (None, 0, 5, 9)] == [0, 0, 5, 9]
    for bad in (-1, 10, 1.5, "9", True, [9]):
        with pytest.raises(InvalidInput, match=r"w: priority must be an int from 0 to 9"):
            check_priority(bad, "w")


def test_9_is_the_most_urgent_on_every_broker() -> None:
    # kombu's Redis transport pops its lower numbers first, RabbitMQ its higher ones.
    assert [message_priority(p, REDIS) for p in (0, 8, 9)] == [9, 1, 0]
    assert [message_priority(p, "rediss://h/0") for p in (0, 9)] == [9, 0]
    assert [message_priority(p, AMQP) for p in (0, 8, 9)] == [0, 8, 9]
    assert message_priority(9, "memory://") == 9


def test_celery_is_configured_for_ten_levels() -> None:
    config = celery_config(Settings(broker_url=REDIS))
    assert config["broker_transport_options"]["priority_steps"] == list(range(10))
    assert config["broker_transport_options"]["sep"] == ":"
    assert config["task_inherit_parent_priority"] is True
    assert config["task_default_priority"] == 9  # a normal run's, on Redis
    amqp = celery_config(Settings(broker_url=AMQP, result_backend=REDIS))
    assert amqp["task_queue_max_priority"] == 9
    assert amqp["task_default_priority"] == 0


def orchestrator_on(broker: str, tmp_path: Path) -> Orchestrator:
    return Orchestrator(Settings(broker_url=broker, imports=[], result_backend=REDIS,
                                 database_url=f"sqlite:///{tmp_path / 'p.db'}"))


def fan_out(app: Orchestrator, name: str) -> Workflow:
    """first → (left | right) → join, each on its own queue: chain, chord and finalize."""
    wf = Workflow(name, inputs=["x"], app=app)

    @wf.task(queue="prio.a")
    def first(x: int) -> int:
        return x

    @wf.task(depends_on=first, queue="prio.b")
    def left(first: int) -> int:
        return first + 1

    @wf.task(depends_on=first, queue="prio.c")
    def right(first: int) -> int:
        return first + 2

    @wf.task(depends_on=[left, right], queue="prio.a")
    def join(left: int, right: int) -> int:
        return left + right

    return wf


def signatures(sig: Any) -> Iterator[Signature]:
    """Every task signature of a canvas, chord bodies included."""
    if isinstance(sig, list | tuple):
        for task in sig:
            yield from signatures(task)
    elif isinstance(sig, _chord):
        yield from signatures(sig.tasks)
        yield from signatures(sig.body)
    elif isinstance(sig, _chain | group):
        for task in sig.tasks:
            yield from signatures(task)
    else:
        yield sig
        fork = sig.kwargs.get("fork")  # a parallel group run as a fork: its branches, body
        for part in [*fork["branches"], fork["body"]] if fork else ():
            yield from signatures(maybe_signature(part))


@pytest.mark.parametrize(("broker", "sent"), [(REDIS, 1), (AMQP, 8)])
def test_every_message_of_the_canvas_carries_the_priority(
        tmp_path: Path, broker: str, sent: int) -> None:
    app = orchestrator_on(broker, tmp_path)
    try:
        wf = fan_out(app, "prio_canvas")
        canvas = run_canvas(app, wf, "r-1", {"x": 1}, priority=8)
        tasks = list(signatures(canvas))
        assert {sig.task for sig in tasks} >= {"prio_canvas.first", "prio_canvas.join"}
        assert [sig.options.get("priority") for sig in tasks] == [sent] * len(tasks)
        normal = list(signatures(run_canvas(app, wf, "r-2", {"x": 1})))
        assert {sig.options.get("priority") for sig in normal} == {
            message_priority(0, broker)}
    finally:
        app.shutdown()


def run_rows(app: Orchestrator) -> int:
    with app.store.engine.connect() as connection:
        return int(connection.execute(text("select count(*) from runs")).scalar_one())


def test_a_bad_priority_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    app = orchestrator_on(REDIS, tmp_path)  # nobody listens: a publish would fail
    try:
        wf = fan_out(app, "prio_refused")
        with pytest.raises(InvalidInput, match=r"'prio_refused': priority must be an int"):
            wf.submit(x=1, priority=10)
        with pytest.raises(InvalidInput, match=r"priority must be an int .* got 'high'"):
            wf.submit_many([{"x": 1}], priority="high")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match=r"defer=True\) .* priority=5"):
            wf.submit_many([{"x": 1}], defer=True, priority=5)
        assert run_rows(app) == 0
    finally:
        app.shutdown()


@pytest.fixture
def priorities() -> Iterator[list[tuple[str, Any, Any]]]:
    """``(task name, kwargs, priority property)`` of every message published."""
    seen: list[tuple[str, Any, Any]] = []

    def record(sender: str | None = None, body: Any = None, properties: Any = None,
               **_: Any) -> None:
        kwargs = body[1] if isinstance(body, list | tuple) and len(body) == 3 else {}
        seen.append((str(sender), kwargs, (properties or {}).get("priority")))

    signals.before_task_publish.connect(record, weak=False)
    try:
        yield seen
    finally:
        signals.before_task_publish.disconnect(record)


def test_maps_and_child_runs_inherit_the_run_priority(
        tmp_path: Path, priorities: list[tuple[str, Any, Any]]) -> None:
    with embedded_orchestrator(tmp_path) as app:
        child = Workflow("prio_child", inputs=["n"], app=app)

        @child.task
        def double(n: int) -> int:
            return 2 * n

        parent = Workflow("prio_parent", inputs=["items"], app=app)

        @parent.task(map="items", chunk_size=1)
        def square(items: int) -> int:
            return items * items

        @parent.task(depends_on=square)
        def spawn(square: list[int], ctx: StepContext) -> Any:
            return ctx.run_child(child, n=sum(square))

        urgent = parent.submit(items=[1, 2, 3], priority=7)
        result = urgent.wait(timeout=30)
        assert result.outputs["spawn"] == {"double": 28}
        [child_run] = app.store.list_runs(workflow="prio_child", limit=5)
        assert app.store.priority_of(child_run.run_id) == 7  # sent again at it, too
        wait_until(lambda: any(name.startswith("prio_child.") for name, _, _ in priorities),
                   timeout=10, what="the child run's message")
        names = {name for name, _, _ in priorities}
        assert {"prio_parent.square", "prio_parent.spawn", "prio_child.double"} <= names
        workflow_messages = [(name, pri) for name, _, pri in priorities
                             if name.startswith(("prio_", "orchestration.map"))]
        assert len(workflow_messages) > 4  # the chunks, the collect, the steps, the child
        assert {pri for _, pri in workflow_messages} == {7}, workflow_messages


# -- triggers, emit and pipeline files ---------------------------------------------------------


def test_a_trigger_priority_is_checked_when_declared(tmp_path: Path) -> None:
    assert make_trigger("t", event="e", workflow="w").priority == 0
    assert make_trigger("t", event="e", workflow="w", priority=6).priority == 6
    with pytest.raises(WorkflowDefinitionError, match=r"trigger 't': priority must be an int"):
        make_trigger("t", event="e", workflow="w", priority=10)


def test_triggers_start_runs_at_their_priority_and_emit_overrides_it(
        tmp_path: Path, priorities: list[tuple[str, Any, Any]]) -> None:
    with embedded_orchestrator(tmp_path) as app:
        wf = Workflow("prio_events", inputs=["n"], app=app)

        @wf.task
        def echo(n: int) -> int:
            return n

        wf.on_event("prio.created", inputs={"n": "$.n"}, priority=8)

        def run_priority(n: int) -> Any:
            return [pri for name, kwargs, pri in priorities
                    if name == "prio_events.echo" and kwargs.get("run_id") == run_of[n]]

        run_of: dict[int, str] = {}
        for n, given in ((1, None), (2, 3)):
            [outcome] = emit("prio.created", {"n": n}, event_id=f"e-{n}", priority=given,
                             orchestrator=app)
            assert outcome.run_id is not None
            run_of[n] = outcome.run_id
        assert run_priority(1) == [8]
        assert run_priority(2) == [3]
        with pytest.raises(InvalidInput, match=r"event 'prio.created': priority must be"):
            emit("prio.created", {"n": 3}, event_id="e-3", priority=11, orchestrator=app)
        assert len(app.store.list_runs(workflow="prio_events", limit=10)) == 2


def test_a_pipeline_trigger_has_a_priority(tmp_path: Path) -> None:
    def document(priority: object) -> Path:
        path = tmp_path / f"p{priority}.json"
        path.write_text(json.dumps({
            "pipeline": f"prio_pipeline_{priority}", "inputs": ["text"],
            "steps": {"answer": {"model": "gpt-4o-mini", "prompt": "{{ text }}"}},
            "triggers": {"urgent": {"event": "prio.file", "inputs": {"text": "$.text"},
                                    "priority": priority}}}))
        return path

    with embedded_orchestrator(tmp_path) as app:
        assert load_pipeline(document(7), orchestrator=app).triggers[0].priority == 7
        with pytest.raises(PipelineError, match=r"priority"):
            load_pipeline(document(12), orchestrator=app)


def test_a_run_sent_again_keeps_its_priority(
        tmp_path: Path, priorities: list[tuple[str, Any, Any]]) -> None:
    """The reconciler, resume and the dead-worker sweep send a run with dispatch()."""
    with embedded_orchestrator(tmp_path) as app:
        wf = Workflow("prio_again", inputs=["x"], app=app)

        @wf.task
        def once(x: int) -> int:
            return x

        urgent = wf.submit(x=1, priority=6)
        [batched] = wf.submit_many([{"x": 2}], priority=4)
        for handle in (urgent, batched):
            handle.wait(timeout=30)
        assert app.store.priority_of(urgent.run_id) == 6
        assert app.store.priority_of(batched.run_id) == 4
        priorities.clear()
        app.dispatch(wf, urgent.run_id, {"x": 1})
        app.dispatch(wf, batched.run_id, {"x": 2})
        sent = {kwargs.get("run_id"): pri for name, kwargs, pri in priorities
                if name == "prio_again.once"}
        assert sent == {urgent.run_id: 6, batched.run_id: 4}
