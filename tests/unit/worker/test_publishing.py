"""Celery's headers and events show a summary of a step's envelope, never its values."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, Task, chain, states
from celery.backends.redis import RedisBackend
from celery.result import GroupResult
from celery.signals import before_task_publish
from celery.worker.request import Request

from config.celery import celery_config, result_backend
from orchestration import Orchestrator, RunStatus, Workflow
from orchestration.core.settings import Settings
from orchestration.testing import embedded_orchestrator
from orchestration.worker.publishing import StepRequest, StepTask, args_summary, kwargs_summary
from orchestration.worker.result_backend import StepRedisBackend, stored_result

SECRET = "hunter2-very-secret-value"


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    headers: list[dict[str, Any]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers is not None:
            seen.append(dict(headers))

    seen = headers
    before_task_publish.connect(record, weak=False)
    yield headers
    before_task_publish.disconnect(record)


@pytest.fixture
def orch() -> Iterator[Orchestrator]:
    with embedded_orchestrator() as orchestrator:
        yield orchestrator


def test_headers_name_the_run_and_never_carry_its_values(
        orch: Orchestrator, published: list[dict[str, Any]]) -> None:
    flow = Workflow("publishing_demo", inputs=["text", "password"], app=orch)

    @flow.task(queue="publishing.a")
    def first(text: str, password: str) -> int:
        return len(password)

    @flow.task(queue="publishing.b", map="items")
    def second(first: int, items: int) -> int:
        return first + items

    flow.task(name="items")(lambda: [1, 2, 3])

    result = flow.submit(text="hi", password=SECRET).wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, result.error
    steps = [h for h in published if str(h.get("task", "")).startswith("publishing_demo.")]
    assert len(steps) >= 3  # the first step, the map step, its chunks
    for header in published:
        assert SECRET not in str(header.get("argsrepr")) + str(header.get("kwargsrepr"))
    for header in steps:
        assert result.run_id in str(header["argsrepr"]) + str(header["kwargsrepr"])


def test_the_task_sent_event_carries_the_summary(orch: Orchestrator) -> None:
    envelope = {"run": "r-1", "out": {"password": SECRET}}
    message = orch.celery.amqp.as_task_v2("t-1", "x.step", (envelope,),
                                          {"run_id": "r-1", "fused": ["a", "b"]},
                                          create_sent_event=True)

    assert message.sent_event["args"] == "(<envelope of run r-1>,)"
    assert message.sent_event["kwargs"] == "{'run_id': 'r-1', 'fused': ['a', 'b']}"
    assert message.headers["argsrepr"] == "(<envelope of run r-1>,)"


def test_summaries() -> None:
    assert args_summary(()) == "()"
    assert args_summary(([SECRET],)) == "(<list>,)"
    assert kwargs_summary({"chunk": {"start": 64, "items": [SECRET] * 3}, "run_id": "r",
                           "message": {"out": SECRET}, "step": {"nested": SECRET}}) == (
        "{'chunk': {'start': 64, 'items': 3}, 'run_id': 'r', 'message': '<omitted>', "
        "'step': '<omitted>'}")
    packed = [[{"run": f"r{i}", "out": {"key": SECRET}}, f"r{i}"] for i in range(3)]
    assert kwargs_summary({"pack": packed, "finalize": True}) == (
        "{'pack': '<3 runs>', 'finalize': True}")
    body = {"task": "wf.d", "args": [], "kwargs": {"run_id": "r"}, "options": {}}
    assert kwargs_summary({"fork": {"id": "f", "branches": [body, body], "body": body},
                           "join": {"id": "f", "index": 1, "size": 2, "body": body}}) == (
        "{'fork': '<2 branches>', 'join': '<branch 1 of 2>'}")
    assert kwargs_summary({"messages": [["wf.b", [{"out": SECRET}], {}]] * 3}) == (
        "{'messages': '<3 messages>'}")


def test_a_succeeded_event_carries_a_summary_of_the_result(orch: Orchestrator) -> None:
    sent: list[dict[str, Any]] = []
    dispatcher = orch.celery.events.Dispatcher(connection=None, enabled=False)
    dispatcher.enabled, dispatcher._closed = True, False
    dispatcher._publish = lambda event, *_, **__: sent.append(dict(event))

    dispatcher.send("task-succeeded", uuid="t-1",
                    result=repr({"run": "r-9", "out": {"password": SECRET}}))
    dispatcher.send("task-succeeded", uuid="t-2", result="[1, 2]")
    dispatcher.send("task-received", uuid="t-3", args="(<envelope of run r-9>,)")

    assert [e.get("result") for e in sent] == [
        "<envelope of run r-9>", "<omitted: see the results DB>", None]


# -- what inspect shows and what the result backend keeps ---------------------------------


def test_every_task_of_the_app_shows_its_requests_by_summary(orch: Orchestrator) -> None:
    flow = Workflow("publishing_request", app=orch)

    @flow.task
    def echo(text: str) -> str:
        return text

    flow.validate()
    task = orch.celery.tasks["publishing_request.echo"]
    assert isinstance(task, StepTask)
    assert task.Request == "orchestration.worker.publishing:StepRequest"


def test_a_request_is_shown_by_its_summaries_even_when_unsafe_output_is_asked() -> None:
    request = object.__new__(StepRequest)
    shown = {"id": "t1", "name": "wf.step", "args": "(<envelope of run r1>,)",
             "kwargs": "{'run_id': 'r1'}"}

    def fake_info(self: Any, safe: bool = False) -> dict[str, Any]:
        assert safe, "the request must always be shown by its summaries"
        return shown

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Request, "info", fake_info)
        assert request.info() == shown
        assert request.info(safe=False) == shown


def test_a_task_key_keeps_a_summary_of_a_success_only() -> None:
    envelope = {"run": "r-1", "out": {"password": SECRET}}
    assert stored_result(envelope, states.SUCCESS) == "<envelope of run r-1>"
    assert stored_result([envelope, envelope], states.SUCCESS) == "<omitted: see the results DB>"
    assert stored_result(None, states.SUCCESS) is None
    failure = ValueError("boom")
    assert stored_result(failure, states.FAILURE) is failure


@pytest.mark.parametrize(("url", "backend"), [
    ("redis://h:6379/1", "orchestration.worker.result_backend:StepRedisBackend+redis://h:6379/1"),
    ("rediss://h:6380/0", "orchestration.worker.result_backend:StepRedisBackend+rediss://h:6380/0"),
    ("db+postgresql://h/x", "db+postgresql://h/x"),
])
def test_a_redis_result_backend_is_the_step_backend(url: str, backend: str) -> None:
    settings = Settings(broker_url="redis://h:6379/0", result_backend=url)
    assert celery_config(settings)["result_backend"] == backend
    assert result_backend(Settings(broker_url=url if url.startswith("redis") else
                                   "redis://h:6379/0")).startswith(
        "orchestration.worker.result_backend:StepRedisBackend+redis")


def test_the_step_backend_is_what_celery_builds_from_the_url() -> None:
    app = Celery("publishing_backend", set_as_current=False)
    app.conf.result_backend = celery_config(Settings(broker_url="redis://127.0.0.1:1/0"))[
        "result_backend"]
    assert isinstance(app.backend, StepRedisBackend)
    assert app.backend.connparams["port"] == 1


@pytest.fixture
def redis_orch(tmp_path: Path) -> Iterator[Orchestrator]:
    """An orchestrator configured for a Redis nobody listens on (nothing connects here)."""
    orchestrator = Orchestrator(Settings(broker_url="redis://127.0.0.1:1/0", imports=[],
                                         database_url=f"sqlite:///{tmp_path / 'r.db'}"))
    yield orchestrator
    orchestrator.shutdown()


def test_the_step_backend_keeps_a_summary_of_engine_results_only(
        redis_orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = Workflow("publishing_backend_flow", app=redis_orch)

    @flow.task
    def echo(password: str) -> str:
        return password

    flow.validate()
    def plain_task() -> None:
        return None

    plain = redis_orch.celery.task(name="publishing.plain", base=Task)(plain_task)
    kept: list[Any] = []
    monkeypatch.setattr(RedisBackend, "_store_result",
                        lambda self, task_id, result, *args, **kwargs: kept.append(result))
    backend = redis_orch.celery.backend
    envelope = {"run": "r-9", "out": {"password": SECRET}}
    for name in ("publishing_backend_flow.echo", plain.name):
        returned = backend._store_result("t", envelope, states.SUCCESS,
                                         request=SimpleNamespace(task=name))
        assert returned is envelope
    assert kept == ["<envelope of run r-9>", envelope]


def test_an_engine_chord_saves_no_complex_header(redis_orch: Orchestrator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    flow = Workflow("publishing_chord_flow", app=redis_orch)

    @flow.task
    def step(text: str) -> str:
        return text

    flow.validate()
    saved: list[Any] = []
    monkeypatch.setattr(RedisBackend, "apply_chord",
                        lambda self, args, body, **kwargs: saved.append(body))
    backend = redis_orch.celery.backend
    header = ("gid", [GroupResult("inner", [])])
    engine_body = chain(redis_orch.celery.signature("publishing_chord_flow.step"),
                        redis_orch.celery.signature("orchestration.finalize"))
    backend.apply_chord(header, engine_body)
    assert saved == []  # every join of an engine chord reads the chord's own parts
    other = redis_orch.celery.signature("somebody.else")
    backend.apply_chord(header, other)
    assert saved == [other]
