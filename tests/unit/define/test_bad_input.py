"""Bad input, table by table: each is refused where it is given, naming the culprit.

Every case asserts the error type (an engine error under OrchestrationError, or
pydantic's ValidationError for settings), that the message names what is wrong, and
that nothing was written to the results DB or published to the broker.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestration import (
    Backoff,
    InvalidInput,
    OrchestrationError,
    Workflow,
    WorkflowDefinitionError,
)
from orchestration.app import Orchestrator
from orchestration.core.envelope import is_envelope
from orchestration.core.settings import Settings
from orchestration.testing import embedded_settings

TABLES = ("runs", "steps", "step_attempts")


def rows(database: Path) -> dict[str, int]:
    """Rows per table of a SQLite results DB (none when it was never created)."""
    if not database.exists():
        return dict.fromkeys(TABLES, 0)
    with sqlite3.connect(database) as conn:
        present = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                if table in present else 0 for table in TABLES}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Orchestrator]:
    """An orchestrator on the in-process broker whose worker is never started here."""
    orchestrator = Orchestrator(embedded_settings(tmp_path))
    yield orchestrator
    orchestrator.shutdown()


def nothing_happened(app: Orchestrator, published: list[tuple[str, Any]]) -> None:
    database = Path(app.settings.database_url.removeprefix("sqlite:///"))
    assert rows(database) == dict.fromkeys(TABLES, 0)
    assert published == []


# -- definition ------------------------------------------------------------------------

def plain(text: str) -> str:
    return text


async def coroutine_step(text: str) -> str:
    return text


def generator_step(text: str) -> Iterator[str]:
    yield text


async def async_generator_step(text: str) -> Any:
    yield text


class AsyncCallable:
    async def __call__(self, text: str) -> str:
        return text


class Methods:
    def classify(self, text: str) -> str:
        return text


def step(**options: Any) -> Callable[[Workflow], Any]:
    """Declare ``plain`` with these options."""
    return lambda wf: wf.task(**options)(plain)


def decorate(fn: Callable[..., Any], **options: Any) -> Callable[[Workflow], Any]:
    return lambda wf: wf.task(**options)(fn)


def workflow(**kwargs: Any) -> Callable[[Orchestrator], Any]:
    return lambda app: Workflow(app=app, **kwargs)


NAN, INF = math.nan, math.inf

# (case id, what is declared, text the error must contain)
DEFINITIONS: list[tuple[str, Callable[[Workflow], Any], str]] = [
    ("step name a keyword", step(name="class"), "'class' is a Python keyword"),
    ("step name None keyword", step(name="None"), "'None' is a Python keyword"),
    ("step name not identifier", step(name="two words"), "name must be a Python identifier"),
    ("step name too long", step(name="s" * 201), "201 characters"),
    ("output a keyword", step(output="lambda"), "output 'lambda' is a Python keyword"),
    ("queue with comma", step(queue="a,b"), "queue 'a,b' contains ','"),
    ("queue with space", step(queue="model fast"), "queue 'model fast' contains ' '"),
    ("queue amq.", step(queue="amq.steps"), "queue 'amq.steps'"),
    ("model with comma", step(model="gpt,4"), "model 'gpt,4'"),
    ("async generator", decorate(async_generator_step),
     "'async_generator_step' is an async generator"),
    ("generator", decorate(generator_step), "'generator_step' is a generator"),
    ("unbound method", decorate(Methods.classify), "first parameter is 'self'"),
    ("no __name__", decorate(functools.partial(plain)), "name the step with task(name=...)"),
    ("timeout nan", step(timeout=NAN), "timeout must be > 0 seconds, got nan"),
    ("timeout inf", step(timeout=INF), "timeout must be > 0 seconds, got inf"),
    ("timeout negative", step(timeout=-1), "timeout must be > 0 seconds, got -1"),
    ("timeout callable with args", step(timeout=lambda x: 1), "called with no arguments"),
    ("timeout async callable", step(timeout=coroutine_step), "its timeout callable"),
    ("backoff nan", step(backoff=NAN), "initial must be a finite number, got nan"),
    ("backoff inf", step(backoff=INF), "initial must be a finite number, got inf"),
    ("backoff negative", step(backoff=-0.5), "values must be >= 0"),
    ("retries float", step(retries=2.5), "retries must be a whole number >= 0, got 2.5"),
    ("retries text", step(retries="3"), "retries must be a whole number >= 0, got '3'"),
    ("retries nan", step(retries=NAN), "retries must be a whole number >= 0, got nan"),
    ("retries negative", step(retries=-1), "retries must be a whole number >= 0, got -1"),
    ("max_cost nan", step(max_cost=NAN), "max_cost must be a number >= 0, got nan"),
    ("max_cost inf", step(max_cost=INF), "max_cost must be a number >= 0, got inf"),
    ("cache inf", step(cache=INF), "cache must be True/False or a TTL"),
    ("cache nan", step(cache=NAN), "cache must be True/False or a TTL"),
    ("fallback takes nothing", step(fallback=lambda: "x"),
     "cannot take them: got an unexpected keyword argument 'text'"),
    ("fallback needs more", step(fallback=lambda text, lang: text),
     "missing a required argument: 'lang'"),
    ("fallback wants ctx", step(fallback=lambda text, ctx: text),
     "missing a required argument: 'ctx'"),
    ("fallback async", step(fallback=coroutine_step), "its fallback 'coroutine_step' is async"),
    ("fallback value not JSON", step(fallback={"when": object()}), "fallback value dict"),
    ("fallback value NaN", step(fallback=NAN), "fallback value float is not JSON"),
    ("on_retry arity", step(on_retry=lambda: None), "on_retry(attempt, exception, params)"),
    ("when async", step(when=coroutine_step), "its when= predicate"),
    ("when method", step(when=Methods.classify), "first parameter is 'self'"),
    ("gate async", step(gate=coroutine_step), "its gate 'coroutine_step' is async"),
    ("on_retry async", step(on_retry=AsyncCallable()), "on_retry"),
]

BACKOFFS: list[tuple[str, dict[str, Any], str]] = [
    ("maximum inf", {"maximum": INF}, "maximum must be a finite number, got inf"),
    ("initial nan", {"initial": NAN}, "initial must be a finite number, got nan"),
    ("jitter text", {"jitter": "1"}, "jitter must be a finite number, got '1'"),
    ("multiplier below 1", {"multiplier": 0.5}, "multiplier >= 1"),
]

WORKFLOWS: list[tuple[str, Callable[[Orchestrator], Any], str]] = [
    ("name orchestration", workflow(name="orchestration"), "'orchestration' is reserved"),
    ("name celery", workflow(name="celery"), "'celery' is reserved"),
    ("name with dot", workflow(name="a.b"), "got 'a.b'"),
    ("name leading dash", workflow(name="-wf"), "got '-wf'"),
    ("name too long", workflow(name="w" * 201), "201 characters"),
    ("queue with comma", workflow(name="wf", queue="x,y"), "queue 'x,y' contains ','"),
    ("inputs a string", workflow(name="wf", inputs="text"), "inputs must be a list of names"),
    ("input a keyword", workflow(name="wf", inputs=["class"]), "'class' is a Python keyword"),
    ("budget nan", workflow(name="wf", budget=NAN), "budget must be a finite USD amount"),
    ("budget inf", workflow(name="wf", budget=INF), "budget must be a finite USD amount"),
    ("redact async", workflow(name="wf", redact=coroutine_step), "its redact hook"),
]


@pytest.mark.parametrize(("declare", "message"), [case[1:] for case in DEFINITIONS],
                         ids=[case[0] for case in DEFINITIONS])
def test_a_bad_step_is_refused_at_definition(app: Orchestrator,
                                             published: list[tuple[str, Any]],
                                             declare: Callable[[Workflow], Any],
                                             message: str) -> None:
    wf = Workflow("defs", app=app)
    with pytest.raises(WorkflowDefinitionError) as info:
        declare(wf)
    assert isinstance(info.value, OrchestrationError)
    assert message in str(info.value)
    assert "defs" in str(info.value)  # names the workflow (and the step, when it has one)
    assert wf.steps == {}
    assert not [name for name in app.celery.tasks if name.startswith("defs.")]
    nothing_happened(app, published)


@pytest.mark.parametrize(("values", "message"), [case[1:] for case in BACKOFFS],
                         ids=[case[0] for case in BACKOFFS])
def test_a_bad_backoff_is_refused_when_built(values: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match="invalid backoff") as info:
        Backoff(**values)
    assert message in str(info.value)


@pytest.mark.parametrize(("declare", "message"), [case[1:] for case in WORKFLOWS],
                         ids=[case[0] for case in WORKFLOWS])
def test_a_bad_workflow_is_refused_at_definition(app: Orchestrator,
                                                 published: list[tuple[str, Any]],
                                                 declare: Callable[[Orchestrator], Any],
                                                 message: str) -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        declare(app)
    assert message in str(info.value)
    assert app.workflows == {}
    nothing_happened(app, published)


def test_a_keyword_step_no_longer_breaks_other_workflows(app: Orchestrator) -> None:
    """Defect: name="class" was accepted, and Celery compiling ``def class(...)`` then
    raised SyntaxError at the first submit of any workflow in the process."""
    good = Workflow("good", app=app)
    good.task(plain)
    bad = Workflow("bad", app=app)
    with pytest.raises(WorkflowDefinitionError, match="'class' is a Python keyword"):
        bad.task(name="class")(plain)

    result = good.run(text="hi", timeout=30)

    assert result.outputs == {"plain": "hi"}
    assert [run.workflow for run in app.store.list_runs()] == ["good"]


def test_fallbacks_that_fit_the_step_are_accepted(app: Orchestrator) -> None:
    wf = Workflow("fits", app=app)

    def with_optional(text: str, lang: str = "en") -> str:
        return text

    wf.task(fallback=lambda text, lang="en": text)(with_optional)
    wf.task(name="kwargs", fallback=lambda **kwargs: "x")(plain)
    wf.task(name="extra_default", fallback=lambda text, extra=1: text)(plain)
    wf.task(name="builtin", fallback=str)(plain)
    wf.task(name="bound", fallback=Methods().classify)(plain)
    wf.task(name="value", fallback={"team": "general"})(plain)
    assert set(wf.steps) == {"with_optional", "kwargs", "extra_default", "builtin", "bound",
                             "value"}


# -- submission ------------------------------------------------------------------------

def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def circular() -> Any:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def submit(**inputs: Any) -> Callable[[Workflow], Any]:
    return lambda wf: wf.submit(**inputs)


def submit_many(*batch: dict[Any, Any], defer: bool = False) -> Callable[[Workflow], Any]:
    return lambda wf: wf.submit_many(list(batch), defer=defer)


SUBMISSIONS: list[tuple[str, Callable[[Workflow], Any], list[str]]] = [
    ("deeply nested", submit(data=nested(10_000)), ["'data'", "nested deeper than 100"]),
    ("just over the depth", submit(data=nested(101)), ["'data'", "nested deeper than 100"]),
    ("contains itself", submit(data=circular()), ["'data'", "contains itself"]),
    ("int key", submit(data={1: "a"}), ["'data'", "key 1 is a int", "top level"]),
    ("None key", submit(data={None: "a"}), ["'data'", "key None is a NoneType"]),
    ("nested bool key", submit(data={"x": [{"ok": 1}, {True: 1}]}),
     ["'data'", "at ['x'][1]: key True is a bool"]),
    ("tuple key", submit(data={(1, 2): "a"}), ["'data'", "key (1, 2) is a tuple"]),
    ("NaN", submit(data=[1.5, math.nan]), ["'data'", "not JSON"]),
    ("not JSON", submit(data={"at": object()}), ["'data'", "not JSON"]),
    ("missing input", submit(), ["missing input(s) data"]),
    ("ctx as an input", submit(data=1, ctx=2), ["'ctx' is reserved"]),
    ("empty idempotency key", lambda wf: wf.submit(data=1, idempotency_key=""),
     ["idempotency_key must be a non-empty string"]),
    ("long idempotency key", lambda wf: wf.submit(data=1, idempotency_key="k" * 201),
     ["idempotency_key", "at most 200"]),
    ("int idempotency key", lambda wf: wf.submit(data=1, idempotency_key=7),
     ["idempotency_key", "got 7"]),
    ("batch int key", submit_many({"data": 1}, {"data": {2: "b"}}),
     ["run 1 of the batch", "'data'", "key 2 is a int"]),
    ("batch deep, deferred", submit_many({"data": nested(500)}, defer=True),
     ["run 0 of the batch", "nested deeper"]),
    ("batch idempotency key", submit_many({"data": 1, "idempotency_key": "k"}),
     ["run 0 of the batch", "'idempotency_key' is reserved"]),
    ("batch input name not str", submit_many({"data": 1, 3: "x"}),
     ["run 0 of the batch", "input names are strings, got 3"]),
]


@pytest.mark.parametrize(("send", "messages"), [case[1:] for case in SUBMISSIONS],
                         ids=[case[0] for case in SUBMISSIONS])
def test_bad_inputs_are_refused_at_submission(app: Orchestrator,
                                              published: list[tuple[str, Any]],
                                              send: Callable[[Workflow], Any],
                                              messages: list[str]) -> None:
    wf = Workflow("subs", app=app)

    @wf.task
    def echo(data: Any) -> Any:
        return data

    with pytest.raises(InvalidInput) as info:
        send(wf)
    for message in messages:
        assert message in str(info.value)
    assert "subs" in str(info.value)
    nothing_happened(app, published)


# -- messages --------------------------------------------------------------------------

MESSAGES: list[tuple[str, Any]] = [
    ("dict of the wrong shape", {"a": 1}),
    ("list of numbers", [1, 2, 3, 4, 5]),
    ("a string", "run"),
    ("None", None),
    ("empty list", []),
    ("run id not a string", {"run": 1, "out": {}}),
    ("outputs not a dict", {"run": "r", "out": [1]}),
    ("one bad part of a chord", [{"run": "r", "out": {}}, {"a": 1}]),
    ("nested deeper than the stack", nested(100_000)),
]


@pytest.mark.parametrize("body", [case[1] for case in MESSAGES], ids=[c[0] for c in MESSAGES])
def test_a_malformed_step_message_is_not_an_envelope(body: Any) -> None:
    # The worker rejects (never runs, never crashes on) what is not an envelope.
    assert is_envelope(body) is False


# -- settings --------------------------------------------------------------------------

SETTINGS: list[tuple[str, dict[str, str], str]] = [
    ("unknown broker transport", {"ORCH_BROKER_URL": "garbage://"}, "unknown transport 'garbage'"),
    ("failover to garbage", {"ORCH_BROKER_URL": "redis://a;garbage://b"}, "'garbage'"),
    ("broker without scheme", {"ORCH_BROKER_URL": "localhost:6379"}, "ORCH_BROKER_URL"),
    ("unknown result backend", {"ORCH_RESULT_BACKEND": "garbage://x"}, "unknown result backend"),
    ("amqp broker without backend", {"ORCH_BROKER_URL": "amqp://guest@localhost//"},
     "ORCH_RESULT_BACKEND must be set"),
    ("redis url not redis", {"ORCH_REDIS_URL": "http://localhost"}, "ORCH_REDIS_URL"),
    ("negative inline limit", {"ORCH_INLINE_OUTPUT_LIMIT": "-1"}, "inline_output_limit"),
    ("negative inline retry", {"ORCH_INLINE_RETRY_LIMIT": "-1"}, "inline_retry_limit"),
    ("NaN inline retry", {"ORCH_INLINE_RETRY_LIMIT": "nan"}, "inline_retry_limit"),
    ("no embedded threads", {"ORCH_EMBEDDED_CONCURRENCY": "0"}, "embedded_concurrency"),
    ("negative embedded threads", {"ORCH_EMBEDDED_CONCURRENCY": "-4"}, "embedded_concurrency"),
    ("zero visibility timeout", {"ORCH_VISIBILITY_TIMEOUT": "0"}, "visibility_timeout"),
    ("negative visibility timeout", {"ORCH_VISIBILITY_TIMEOUT": "-60"}, "visibility_timeout"),
    ("NaN reconcile_after", {"ORCH_RECONCILE_AFTER": "nan"}, "reconcile_after"),
    ("infinite reconcile_after", {"ORCH_RECONCILE_AFTER": "inf"}, "reconcile_after"),
    ("zero max input", {"ORCH_MAX_INPUT_BYTES": "0"}, "max_input_bytes"),
    ("zero max crashes", {"ORCH_MAX_CRASHES": "0"}, "max_crashes"),
    ("metrics port out of range", {"ORCH_METRICS_PORT": "70000"}, "metrics_port"),
    ("metrics port zero", {"ORCH_METRICS_PORT": "0"}, "metrics_port"),
    ("unknown log level", {"ORCH_LOG_LEVEL": "loud"}, "ORCH_LOG_LEVEL 'loud'"),
    ("queue with comma", {"ORCH_DEFAULT_QUEUE": "a,b"}, "ORCH_DEFAULT_QUEUE 'a,b'"),
    ("empty queue", {"ORCH_DEFAULT_QUEUE": ""}, "ORCH_DEFAULT_QUEUE ''"),
    ("amq. queue", {"ORCH_DEFAULT_QUEUE": "amq.default"}, "amq."),
]


@pytest.mark.parametrize(("env", "message"), [case[1:] for case in SETTINGS],
                         ids=[case[0] for case in SETTINGS])
def test_nonsensical_settings_are_refused_when_loaded(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path,
                                                      published: list[tuple[str, Any]],
                                                      env: dict[str, str],
                                                      message: str) -> None:
    database = tmp_path / "orchestration.db"
    monkeypatch.setenv("ORCH_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("ORCH_IMPORTS", "")
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError) as info:
        Orchestrator(Settings())

    assert message in str(info.value)
    assert not database.exists()
    assert published == []


def test_sensible_settings_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"ORCH_BROKER_URL": "redis://localhost:6379/0;rediss://other:6380/1",
                        "ORCH_RESULT_BACKEND": "redis://localhost:6379/1",
                        "ORCH_INLINE_OUTPUT_LIMIT": "0", "ORCH_INLINE_RETRY_LIMIT": "0",
                        "ORCH_LOG_LEVEL": "warning", "ORCH_DEFAULT_QUEUE": "model.gpt-4o-mini",
                        "ORCH_REDIS_URL": "unix:///tmp/redis.sock"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.inline_output_limit, settings.log_level) == (0, "WARNING")
    assert Settings(broker_url="amqp://guest@localhost//",
                    result_backend="redis://localhost/0").result_backend == "redis://localhost/0"
