"""The dashboard's workflow list: every workflow seen in the results DB once, and those
registered here, sorted."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, cast

from orchestration.define.workflow import Host
from orchestration.observe.dashboard import workflow_names
from orchestration.store.repository import PlannedStep, Store


class _Host:
    def __init__(self, store: Store, registered: list[str]) -> None:
        self.store = store
        self.workflows: dict[str, Any] = dict.fromkeys(registered)


def test_each_workflow_seen_once_with_the_registered_ones_sorted(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    steps = [PlannedStep("a", "a", "default", None, True)]
    for workflow in ["b_flow", "a_flow", "b_flow", "c_flow", "a_flow", "b_flow"]:
        store.create_run(str(uuid.uuid4()), workflow, "v1", {}, steps)

    names = workflow_names(cast(Host, _Host(store, ["z_flow", "a_flow"])))

    store.dispose()
    assert names == ["a_flow", "b_flow", "c_flow", "z_flow"]


def test_an_empty_results_db_lists_only_the_registered_workflows(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()

    names = workflow_names(cast(Host, _Host(store, ["only"])))

    store.dispose()
    assert names == ["only"]
