"""What redaction changed never travels by reference, and is found in stored copies.

The stored copy of a value is redacted; a reference is read back from it. These check the
pieces that keep a step from receiving that copy: where the marker sits in a stored value,
which values redaction changed, and the envelope keeping those inline whatever their size.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestration import RunStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.core.envelope import INPUT_SOURCE, Envelope
from orchestration.core.redaction import REDACTED, Redactor, changed_by_redaction, redacted_paths
from orchestration.store.repository import PlannedStep, Store
from orchestration.submit.durability import redacted_inputs
from orchestration.testing import embedded_orchestrator, embedded_settings
from orchestration.worker.embedded import EmbeddedWorker

RUN = "run-1"


@pytest.mark.parametrize("stored, paths", [
    (REDACTED, ["creds"]),
    ({"user": "dana", "password": REDACTED}, ["creds.password"]),
    ([{"token": REDACTED}, "ok", f"use {REDACTED} now"], ["creds[0].token", "creds[2]"]),
    ({"user": "dana", "note": "nothing secret"}, []),
    (12, []),
])
def test_redacted_paths_finds_the_marker_nested_and_in_part_of_a_string(
    stored: Any, paths: list[str],
) -> None:
    assert redacted_paths(stored, "creds") == paths


def test_redacted_paths_does_not_recurse() -> None:
    deep: Any = REDACTED
    for _ in range(10_000):  # far deeper than the interpreter's recursion limit
        deep = [deep]
    assert len(redacted_paths(deep, "x")) == 1


def test_changed_by_redaction_names_what_the_stored_copy_lost() -> None:
    inputs = {"creds": {"password": "hunter2"}, "note": "use token=abcdef123456 now",
              "text": "plain", "pair": (1, 2)}
    stored = Redactor()(inputs)
    # A tuple stored as a list is the same JSON: not a change.
    assert changed_by_redaction(inputs, stored) == {"creds", "note"}
    assert changed_by_redaction(inputs, "a hook that returned a string") == set(inputs)


def test_a_hook_change_is_found_only_when_recorded() -> None:
    stored = {"text": "write to <email>", "creds": {"password": REDACTED}}
    assert redacted_inputs(stored) == ["creds"]
    assert redacted_inputs(stored, ["text"]) == ["creds", "text"]
    assert redacted_inputs(stored, ["gone"]) == ["creds"]  # only inputs the run has


def test_large_inputs_changed_by_redaction_stay_inline() -> None:
    secret = "token=abcdef123456 " + "x" * 100
    plain = "y" * 100
    inputs = {"secret": secret, "plain": plain, "small": "token=abcdef123456"}
    asked: list[int] = []

    def stored() -> Any:
        asked.append(1)
        return Redactor()(inputs)

    envelope = Envelope.for_inputs(RUN, inputs, 50, stored=stored)

    assert envelope.inline == {"secret": secret, "small": "token=abcdef123456"}
    assert envelope.refs == {"plain": INPUT_SOURCE}
    assert asked == [1]  # the stored copy is computed once


def test_stored_copy_is_not_computed_when_every_input_is_small() -> None:
    def stored() -> Any:
        raise AssertionError("not needed")

    envelope = Envelope.for_inputs(RUN, {"a": "short"}, 50, stored=stored)
    assert envelope.inline == {"a": "short"}


def test_put_keep_inline_overrides_the_limit() -> None:
    envelope = Envelope(RUN)
    envelope.put("out", "z" * 100, source="step", limit=10, keep_inline=True)
    assert envelope.inline == {"out": "z" * 100} and envelope.refs == {}


# -- the embedded default's recovery of runs a dead process left --------------------------


def test_embedded_recovery_fails_a_run_whose_inputs_were_stored_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = Store(embedded_settings(tmp_path).database_url)
    with embedded_orchestrator(tmp_path) as dead:  # never starts its worker
        compiled = _define(dead).validate()
        planned = [PlannedStep(name, b.spec.output, b.queue, b.spec.model, b.spec.critical)
                   for name, b in compiled.steps.items()]
        run_id = str(uuid.uuid4())
        submitted = {"note": "use token=abcdef123456 now"}
        store.create_run(run_id, "exact_stranded", compiled.version, Redactor()(submitted),
                         planned, redacted=["note"])
    store.dispose()
    dispatched: list[str] = []
    with embedded_orchestrator(tmp_path) as current:
        monkeypatch.setattr(_define(current), "dispatch",
                            lambda run, inputs, **_: dispatched.append(run))
        worker = EmbeddedWorker(current)  # recover() without starting a worker
        try:
            assert worker.recover() == 1
        finally:
            worker.stop()
        run = current.store.get_run(run_id)

    assert dispatched == []
    assert run.status is RunStatus.FAILED and run.error_type == "Unrecoverable"
    assert "note" in (run.error or "") and "orchestrate resume" in (run.error or "")


def _define(app: Orchestrator) -> Workflow:
    wf = Workflow("exact_stranded", app=app)

    @wf.task
    def echo(note: str) -> str:
        return note

    return wf
