"""Malformed task messages are rejected with an error log; the worker never dies of them.

The shape checks are tested directly, then end to end on the embedded worker (Celery's
real consumer, threads pool): raw messages published on a step queue with valid task
headers and a body of the wrong shape used to stop the worker at the first one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import signals
from kombu.utils.imports import symbol_by_name
from structlog.testing import capture_logs

from orchestration import RunStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.compile.canvas import FINALIZE_TASK
from orchestration.testing import embedded_orchestrator
from orchestration.worker.engine_tasks import DISPATCH_RUNS_TASK, EXPIRE_WAITS_TASK, RECONCILE_TASK
from orchestration.worker.messages import GuardedConsumer, body_problem, header_problem

QUEUE = "msg.steps"
GOOD_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

#: Bodies (as sent on the wire) Celery's consumer cannot unpack as [args, kwargs, embed].
BAD_BODIES = {
    "object": '{"a": 1}',
    "five": "[1, 2, 3, 4, 5]",
    "one": "[[]]",
    "string": '"hello"',
    "number": "42",
    "null": "null",
    "args-not-list": '[5, {}, {}]',
    "args-object": '[{"a": 1}, {}, {}]',
    "kwargs-list": '[[], [1], {}]',
    "kwargs-null": '[[], null, {}]',
    "embed-null": '[[], {}, null]',
    "embed-list": '[[], {}, []]',
    "embed-unknown": '[[], {}, {"id": "x"}]',
    "callbacks-string": '[[], {}, {"callbacks": "x"}]',
    "chain-of-ints": '[[], {}, {"chain": [1, 2]}]',
    "chord-list": '[[], {}, {"chord": []}]',
    "not-json": "this is not json",
    "truncated": '[[], {"message": ',
}


def test_good_protocol_2_messages_pass() -> None:
    assert body_problem([[], {}, GOOD_EMBED]) is None
    assert body_problem([["x"], {"run_id": "r"}, {}]) is None
    assert body_problem([[], {}, {"chain": [{"task": "t"}], "chord": {"task": "c"}}]) is None
    assert header_problem({"task": "wf.step", "id": "1", "retries": 0,
                           "timelimit": [None, None], "root_id": "r"}) is None


@pytest.mark.parametrize("name", sorted(set(BAD_BODIES) - {"not-json", "truncated"}))
def test_bodies_of_the_wrong_shape_are_named(name: str) -> None:
    problem = body_problem(json.loads(BAD_BODIES[name]))
    assert problem is not None


@pytest.mark.parametrize(("headers", "culprit"), [
    (None, "headers are NoneType"),
    ({}, "no 'task' header"),
    ({"task": ["a"], "id": "1"}, "no 'task' header"),
    ({"task": "wf.step"}, "'id' header is missing"),
    ({"task": "wf.step", "id": 7}, "'id' header is int"),
    ({"task": "wf.step", "id": "1", "timelimit": 5}, "'timelimit'"),
    ({"task": "wf.step", "id": "1", "timelimit": [1, 2, 3]}, "'timelimit'"),
    ({"task": "wf.step", "id": "1", "timelimit": ["a", None]}, "'timelimit'"),
    ({"task": "wf.step", "id": "1", "retries": "2"}, "'retries'"),
    ({"task": "wf.step", "id": "1", "retries": -1}, "'retries'"),
    ({"task": "wf.step", "id": "1", "root_id": 5}, "'root_id'"),
])
def test_headers_celery_cannot_use_are_named(headers: Any, culprit: str) -> None:
    problem = header_problem(headers)
    assert problem is not None and culprit in problem


# -- end to end on the embedded worker -------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(tmp_path_factory.mktemp("messages")) as orch:
        wf = Workflow("msg", app=orch)

        @wf.task(queue=QUEUE)
        def ping(text: str) -> str:
            return f"pong:{text}"

        ns = SimpleNamespace(orch=orch, wf=wf)
        _serves(ns, "warm-up")  # starts the in-process worker on QUEUE
        yield ns


@pytest.fixture
def rejected() -> Iterator[list[str]]:
    """Ids of the task messages the consumer rejected while the test ran."""
    ids: list[str] = []

    def record(message: Any = None, **_: Any) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        ids.append(str(headers.get("id")))

    signals.task_rejected.connect(record, weak=False)
    try:
        yield ids
    finally:
        signals.task_rejected.disconnect(record)


def _serves(app: SimpleNamespace, text: str) -> None:
    result = app.wf.run(text=text, timeout=20)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"ping": f"pong:{text}"}


def _publish(orch: Orchestrator, body: str, headers: dict[str, Any],
             content_type: str = "application/json") -> None:
    with orch.celery.connection_for_write() as conn:
        conn.Producer().publish(body.encode(), routing_key=QUEUE, exchange="",
                                content_type=content_type, content_encoding="utf-8",
                                headers=headers, serializer=None)


def test_every_worker_of_the_app_uses_the_guarded_consumer(app: SimpleNamespace) -> None:
    # ``celery worker`` and the embedded WorkController both build conf.worker_consumer.
    assert symbol_by_name(app.orch.celery.conf.worker_consumer) is GuardedConsumer


@pytest.mark.parametrize("task", ["msg.ping", FINALIZE_TASK, "orchestration.map_collect",
                                  "orchestration.child_done", EXPIRE_WAITS_TASK,
                                  RECONCILE_TASK, DISPATCH_RUNS_TASK, "celery.chord_unlock",
                                  "no.such_task"])
def test_malformed_bodies_are_rejected_and_the_worker_goes_on(
        app: SimpleNamespace, rejected: list[str], task: str) -> None:
    sent = {}
    with capture_logs() as logs:
        for name, body in BAD_BODIES.items():
            sent[name] = task_id = f"bad-{name}-{uuid.uuid4()}"
            _publish(app.orch, body, {"task": task, "id": task_id, "lang": "py"})
        _serves(app, f"after-{task}")  # the same queue, behind every bad message
    assert sorted(rejected) == sorted(sent.values())
    logged = {entry["task_id"]: entry for entry in logs
              if entry.get("event") == "malformed task message rejected"}
    assert set(logged) == set(sent.values())
    assert all(entry["task"] == task and entry["log_level"] == "error"
               for entry in logged.values())


def test_messages_without_usable_headers_are_rejected(app: SimpleNamespace,
                                                      rejected: list[str]) -> None:
    good_body = json.dumps([[], {}, GOOD_EMBED])
    _publish(app.orch, good_body, {"task": "msg.ping"})  # no id
    _publish(app.orch, '{"task": "no.such_task"}', {})  # protocol 1, unknown, no id
    _publish(app.orch, good_body, {"task": "msg.ping", "id": "tl", "timelimit": 5})
    _publish(app.orch, good_body, {"task": "msg.ping", "id": "pk"},
             content_type="application/x-python-serialize")  # pickle stays refused
    _serves(app, "after-headers")
    assert sorted(rejected) == ["None", "None", "pk", "tl"]
