"""Workflow versions: what makes a new one, with and without a declared ``version=``.

Without a label every change of a step's code, shape or signature is a new version
(runs in flight continue only on workers of theirs). With ``version="2"`` code changes
are declared compatible and keep the version; a step added, removed or renamed, a
parameter added or removed, still make a new one. Every step message names the version.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestration import Workflow
from orchestration.app import Orchestrator
from orchestration.errors import WorkflowDefinitionError
from orchestration.testing import embedded_settings


def _version(tmp_path: Path, declare: Callable[[Workflow], None],
             label: str | None = None) -> str:
    orch = Orchestrator(embedded_settings(tmp_path))
    try:
        workflow = Workflow("ticket", inputs=["text"], orchestrator=orch, version=label)
        declare(workflow)
        return workflow.validate().version
    finally:
        orch.shutdown()


def v1(wf: Workflow) -> None:
    @wf.task
    def classify(text: str) -> str:
        return text.lower()

    @wf.task
    def reply(classify: str) -> str:
        return f"re: {classify}"


def code_changed(wf: Workflow) -> None:
    @wf.task
    def classify(text: str) -> str:
        return text.upper()  # the code differs, nothing else

    @wf.task
    def reply(classify: str) -> str:
        return f"re: {classify}"


def step_added(wf: Workflow) -> None:
    v1(wf)

    @wf.task
    def audit(reply: str) -> str:
        return reply


def step_renamed(wf: Workflow) -> None:
    @wf.task(name="categorize", output="classify")
    def classify(text: str) -> str:
        return text.lower()

    @wf.task
    def reply(classify: str) -> str:
        return f"re: {classify}"


def step_removed(wf: Workflow) -> None:
    @wf.task
    def classify(text: str) -> str:
        return text.lower()


def parameter_added(wf: Workflow) -> None:
    @wf.task
    def classify(text: str) -> str:
        return text.lower()

    @wf.task
    def reply(classify: str, text: str) -> str:
        return f"re: {classify}"


SHAPE_CHANGES = [step_added, step_renamed, step_removed, parameter_added]


def test_without_a_label_any_code_change_is_a_new_version(tmp_path: Path) -> None:
    base = _version(tmp_path / "a", v1)
    assert _version(tmp_path / "b", v1) == base  # stable across processes/instances
    assert _version(tmp_path / "c", code_changed) != base


@pytest.mark.parametrize("change", SHAPE_CHANGES, ids=lambda f: f.__name__)
def test_shape_changes_are_new_versions_with_or_without_a_label(
        tmp_path: Path, change: Callable[[Workflow], None]) -> None:
    assert _version(tmp_path / "a", change) != _version(tmp_path / "b", v1)
    assert _version(tmp_path / "c", change, "2") != _version(tmp_path / "d", v1, "2")


def test_a_declared_label_keeps_the_version_across_code_changes(tmp_path: Path) -> None:
    labelled = _version(tmp_path / "a", v1, "2")
    assert labelled.startswith("2-")
    assert _version(tmp_path / "b", code_changed, "2") == labelled
    assert _version(tmp_path / "c", v1, "3") != labelled  # a new label: a new version


@pytest.mark.parametrize("bad", ["", "two words", "-1", "x" * 21, 1.5, True])
def test_a_bad_label_is_refused_naming_the_workflow(tmp_path: Path, bad: Any) -> None:
    orch = Orchestrator(embedded_settings(tmp_path))
    try:
        with pytest.raises(WorkflowDefinitionError, match="workflow 'ticket': version must"):
            Workflow("ticket", orchestrator=orch, version=bad)
    finally:
        orch.shutdown()


def test_every_step_message_names_the_runs_version(tmp_path: Path) -> None:
    orch = Orchestrator(embedded_settings(tmp_path))
    try:
        wf = Workflow("fanout", inputs=["text"], orchestrator=orch)

        @wf.task
        def a(text: str) -> str:
            return text

        @wf.task(queue="other")
        def b(a: str) -> str:
            return a

        @wf.task(queue="third")
        def c(a: str) -> str:
            return a

        @wf.task
        def d(b: str, c: str) -> str:
            return b + c

        version = wf.validate().version
        canvas = wf.canvas("run-1", {"text": "x"})
        seen: list[tuple[str, Any]] = []

        def walk(sig: Any) -> None:
            for part in getattr(sig, "tasks", None) or ():
                walk(part)
            body = getattr(sig, "body", None)
            if body is not None:
                walk(body)
            if not getattr(sig, "tasks", None) and isinstance(getattr(sig, "task", None), str):
                seen.append((sig.task, sig.kwargs.get("version")))
                fork = sig.kwargs.get("fork")  # a parallel group run as a fork
                for part in [*fork["branches"], fork["body"]] if fork else ():
                    walk(orch.celery.signature(part))

        walk(canvas)
        steps = [(task, v) for task, v in seen if task.startswith("fanout.")]
        assert len(steps) == 4
        assert {v for _, v in steps} == {version}
        assert all(v is None for task, v in seen if not task.startswith("fanout."))
    finally:
        orch.shutdown()
