"""Test workflows of one module, declared on one orchestrator before its worker starts.

A workflow declared after an embedded worker started is never run (see
``tests/unit/worker/test_embedded.py``), so a module registers a builder per workflow with
``@flow`` and its fixture builds them all at once: ``flow.build(app)``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

from orchestration.app import Orchestrator

Builder = Callable[[Orchestrator], SimpleNamespace]


class Flows:
    """A registry of workflow builders; an instance is the ``@flow`` decorator."""

    def __init__(self) -> None:
        self.builders: dict[str, Builder] = {}

    def __call__(self, build: Builder) -> Builder:
        """Register ``build`` under its function name."""
        self.builders[build.__name__] = build
        return build

    def build(self, app: Orchestrator) -> dict[str, SimpleNamespace]:
        """Every registered workflow, declared on ``app``: name -> what its builder returns."""
        return {name: build(app) for name, build in self.builders.items()}
