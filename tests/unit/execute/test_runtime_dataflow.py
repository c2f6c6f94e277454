"""Data flow end to end: binding by name, renames, ordering, diamonds, defaults, run handles."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from orchestration import RunResult, RunStatus, StepStatus, Workflow, get_run
from orchestration.app import Orchestrator
from orchestration.testing import embedded_orchestrator
from tests.support.flows import Flows

flow = Flows()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    with embedded_orchestrator(tmp_path_factory.mktemp("dataflow")) as orch:
        yield orch


@pytest.fixture(scope="module")
def flows(app: Orchestrator) -> dict[str, SimpleNamespace]:
    """Every workflow is declared before the worker starts (on the first submit)."""
    return flow.build(app)


@flow
def linear(app: Orchestrator) -> SimpleNamespace:
    wf = Workflow("linear", app=app)

    @wf.task
    def fetch(ticket_id: int) -> str:
        return f"ticket {ticket_id}"

    @wf.task
    def clean(fetch: str) -> str:
        return fetch.upper()

    @wf.task
    def count(clean: str, ticket_id: int) -> list[object]:
        return [clean, len(clean), ticket_id]

    return SimpleNamespace(wf=wf)


def test_linear_chain(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["linear"].wf.run(ticket_id=7, timeout=10)
    assert isinstance(result, RunResult) and result.succeeded
    assert result.outputs == {"fetch": "ticket 7", "clean": "TICKET 7",
                              "count": ["TICKET 7", 8, 7]}
    assert result.inputs == {"ticket_id": 7}
    assert all(step.status is StepStatus.SUCCEEDED and step.attempts == 1
               for step in result.steps.values())
    assert result.duration_s is not None and result.duration_s >= 0


@flow
def diamond(app: Orchestrator) -> SimpleNamespace:
    wf = Workflow("diamond", app=app)

    @wf.task
    def source(x: int) -> int:
        return x + 1

    @wf.task
    def double(source: int) -> int:
        return source * 2

    @wf.task
    def square(source: int) -> int:
        return source * source

    @wf.task
    def merge(double: int, square: int, source: int) -> dict[str, int]:
        return {"double": double, "square": square, "source": source}

    return SimpleNamespace(wf=wf)


def test_diamond_outputs(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["diamond"].wf.run(x=2, timeout=10)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs == {"source": 3, "double": 6, "square": 9,
                              "merge": {"double": 6, "square": 9, "source": 3}}
    merge_started = result.steps["merge"].started_at
    assert merge_started is not None
    for name in ("double", "square"):
        finished = result.steps[name].finished_at
        assert finished is not None and finished <= merge_started


@flow
def renames(app: Orchestrator) -> SimpleNamespace:
    wf = Workflow("renames", app=app)

    @wf.task
    def classify_ticket(text: str) -> str:
        return "billing" if "invoice" in text else "auth"

    @wf.task(depends_on=classify_ticket, output="urgency")
    def extract_urgency(text: str, classify_ticket: str) -> str:
        return "high" if classify_ticket == "auth" else "low"

    @wf.task(depends_on="urgency")  # an output name works as well as a step
    def route_to_team(classify_ticket: str, urgency: str) -> str:
        return f"{classify_ticket}/{urgency}"

    return SimpleNamespace(wf=wf)


def test_binding_by_name_with_renamed_output(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["renames"].wf.run(text="Can't login since update", timeout=10)
    assert result.outputs == {"classify_ticket": "auth", "urgency": "high",
                              "route_to_team": "auth/high"}
    assert result.steps["extract_urgency"].output_name == "urgency"


@flow
def ordering(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(done=[], wf=Workflow("ordering", app=app))

    @ns.wf.task
    def warm_cache(key: str) -> None:
        threading.Event().wait(0.1)  # long enough that a parallel sibling would overtake it
        ns.done.append("warm_cache")

    @ns.wf.task
    def audit(key: str) -> None:
        ns.done.append("audit")

    @ns.wf.task(depends_on=[warm_cache, "audit"])
    def read_cache(key: str) -> list[str]:
        return sorted(ns.done)

    return ns


def test_depends_on_orders_without_data(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["ordering"].wf.run(key="k", timeout=10)
    steps = result.steps
    assert result.outputs["read_cache"] == ["audit", "warm_cache"]
    read_started = steps["read_cache"].started_at
    assert read_started is not None
    for name in ("warm_cache", "audit"):
        finished = steps[name].finished_at
        assert finished is not None and finished <= read_started
    assert result.outputs["warm_cache"] is None and steps["warm_cache"].status.produced_output


@flow
def defaults(app: Orchestrator) -> SimpleNamespace:
    wf = Workflow("defaults", app=app)

    @wf.task
    def scaled(x: int, factor: int = 3) -> int:
        return x * factor

    return SimpleNamespace(wf=wf)


def test_optional_parameters_use_defaults_unless_given(
        flows: dict[str, SimpleNamespace]) -> None:
    wf = flows["defaults"].wf
    assert wf.run(x=2, timeout=10).outputs == {"scaled": 6}
    assert wf.run(x=2, factor=5, timeout=10).outputs == {"scaled": 10}


@flow
def idempotent(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=[], wf=Workflow("idempotent", app=app))

    @ns.wf.task
    def charge(amount: int) -> int:
        ns.calls.append(amount)
        return amount

    return ns


def test_idempotency_key_never_starts_a_run_twice(flows: dict[str, SimpleNamespace],
                                                  app: Orchestrator) -> None:
    ns = flows["idempotent"]
    key = f"order-{uuid.uuid4()}"
    first = ns.wf.submit(idempotency_key=key, amount=10)
    second = ns.wf.submit(idempotency_key=key, amount=10)
    assert second.run_id == first.run_id and second.existing and not first.existing
    assert first.wait(timeout=10).outputs == {"charge": 10}
    other = ns.wf.run(amount=11, timeout=10)  # a later run: proves the worker drained
    assert other.run_id != first.run_id
    assert ns.calls == [10, 11]
    runs = app.store.list_runs(workflow="idempotent")
    assert sorted(r.run_id for r in runs) == sorted([first.run_id, other.run_id])


def test_get_run_reads_a_finished_run(flows: dict[str, SimpleNamespace],
                                      app: Orchestrator) -> None:
    handle = flows["defaults"].wf.submit(x=4)
    finished = handle.wait(timeout=10)
    read = get_run(handle.run_id, app=app)
    assert read.run_id == handle.run_id and read.workflow == "defaults"
    assert read.outputs == finished.outputs == {"scaled": 12}
    assert handle.status() is RunStatus.SUCCEEDED and handle.result().succeeded
