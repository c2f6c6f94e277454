"""handle.stream() end to end on the embedded default: what the step runtime writes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from orchestration import StepContext, Workflow
from orchestration.app import Orchestrator
from orchestration.core.stream_events import StreamEvent
from orchestration.testing import embedded_orchestrator

DAG = ["start", "left", "right", "middle", "join"]


def declare(orch: Orchestrator) -> SimpleNamespace:
    dag = Workflow("live_dag", inputs=["text"], app=orch)

    @dag.task
    def start(text: str, ctx: StepContext) -> str:
        ctx.partial({"seen": len(text)})
        return text.upper()

    @dag.task(depends_on=start)
    def left(start: str) -> str:
        return f"L:{start}"

    @dag.task(depends_on=start)
    def right(start: str) -> str:
        return f"R:{start}"

    @dag.task(depends_on=start)
    def middle(start: str) -> str:
        return f"M:{start}"

    @dag.task(depends_on=[left, right, middle])
    def join(left: str, right: str, middle: str) -> str:
        return "|".join([left, right, middle])

    flaky = Workflow("live_flaky", app=orch, redact=lambda value: value)
    tries: dict[str, int] = {}
    lock = threading.Lock()

    @flaky.task(retries=2, backoff=0)
    def talk(key: str, ctx: StepContext) -> str:
        with lock:
            tries[key] = tries.get(key, 0) + 1
            attempt = tries[key]
        for word in ("hello", "api_key=sk-abcdefghijklmnop1234", f"try{attempt}"):
            ctx.on_token(word)
        ctx.flush_tokens()
        if attempt == 1:
            raise RuntimeError("dropped mid-answer")
        return "ok"

    gated = Workflow("live_gated", app=orch)

    @gated.task
    def review(ctx: StepContext) -> str:
        verdict = ctx.wait_for_input("verdict")
        return f"verdict: {verdict['ok']}"

    return SimpleNamespace(dag=dag, flaky=flaky, gated=gated)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(tmp_path_factory.mktemp("live"), redis_url=None) as orch:
        flows = declare(orch)
        flows.orch = orch
        yield flows


def types_by_step(events: list[StreamEvent]) -> dict[str | None, list[str]]:
    out: dict[str | None, list[str]] = {}
    for item in events:
        out.setdefault(item.step, []).append(item.type)
    return out


def test_every_step_of_a_parallel_dag_in_causal_order(live: SimpleNamespace) -> None:
    handle = live.dag.submit(text="ticket")
    events = list(handle.stream(timeout=30))
    assert events[-1].type == "run_finished" and events[-1]["status"] == "succeeded"
    assert [e.type for e in events].count("run_finished") == 1
    by_step = types_by_step(events)
    for step in DAG:
        assert by_step[step][0] == "step_started" and by_step[step][-1] == "step_finished", step
    assert by_step["start"] == ["step_started", "partial_output", "step_finished"]
    position = {(e.step, e.type): i for i, e in enumerate(events)}
    for branch in ("left", "right", "middle"):  # a dependent starts after what it needs
        assert position[("start", "step_finished")] < position[(branch, "step_started")]
        assert position[(branch, "step_finished")] < position[("join", "step_started")]
    finished = next(e for e in events if e.type == "step_finished" and e.step == "join")
    assert finished["output_summary"] == "L:TICKET|R:TICKET|M:TICKET"
    assert finished["status"] == "succeeded" and finished["latency_ms"] >= 0
    started = next(e for e in events if e.type == "step_started" and e.step == "start")
    assert started["attempt"] == 1 and started["queue"] == "default"
    assert all(e["run_id"] == handle.run_id and e["at"] for e in events)
    assert len({e.offset for e in events}) == len(events)


def test_reconnecting_from_any_offset_loses_and_repeats_nothing(live: SimpleNamespace) -> None:
    handle = live.dag.submit(text="resume me")
    full = list(handle.stream(timeout=30))  # a finished run's stream replays
    assert list(handle.stream(timeout=30)) == full
    for cut in range(len(full)):
        got: list[StreamEvent] = []
        after: str | None = None
        # read one event, drop the connection, resume from the last offset seen
        while not got or got[-1].type != "run_finished":
            item = next(iter(handle.stream(after=after, timeout=30)))
            got.append(item)
            after = item.offset
            if len(got) == cut:
                got += list(handle.stream(after=after, timeout=30))
                break
        assert got == full


def test_a_retried_attempts_tokens_are_superseded_and_redacted(live: SimpleNamespace) -> None:
    handle = live.flaky.submit(key="a")
    events = list(handle.stream(timeout=30))
    tokens = [(e["attempt"], e["text"]) for e in events if e.type == "token"]
    assert tokens == [(1, "hello"), (1, "[REDACTED]"), (1, "try1"),
                      (2, "hello"), (2, "[REDACTED]"), (2, "try2")]
    superseded = [e for e in events if e.type == "tokens_superseded"]
    assert [(e.step, e["attempt"]) for e in superseded] == [("talk", 1)]
    types = [e.type for e in events]
    assert types.index("tokens_superseded") < types.index("step_started", 1 + types.index(
        "step_started"))  # before the retry starts
    assert [e["attempt"] for e in events if e.type == "step_started"] == [1, 2]
def test_a_waiting_run_says_so_and_its_stream_goes_on_after_approval(
        live: SimpleNamespace) -> None:
    handle = live.gated.submit()
    stream = handle.stream(timeout=30)
    seen = []
    for item in stream:
        seen.append(item)
        if item.type == "waiting_for_input":
            break
    assert (seen[-1].step, seen[-1]["name"]) == ("review", "verdict")
    live.orch.approve(handle.run_id, {"ok": True})
    rest = list(handle.stream(after=seen[-1].offset, timeout=30))
    assert [e.type for e in rest][-2:] == ["step_finished", "run_finished"]
    assert rest[-2]["output_summary"] == "verdict: True"
