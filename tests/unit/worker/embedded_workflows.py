"""Workflows for the embedded-default tests: the stateful-agent shape and hung steps."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from orchestration import StepContext, Workflow
from orchestration.app import Orchestrator


def define_agent(app: Orchestrator, name: str = "agent", queue: str | None = None) -> Workflow:
    """Three parallel steps, a ``when=`` branch pair, then a join (a chord of chords)."""
    wf = Workflow(name, app=app, queue=queue)

    @wf.task
    def plan(goal: str) -> str:
        return f"plan({goal})"

    @wf.task
    def recall(goal: str) -> str:
        return f"recall({goal})"

    @wf.task
    def tools(goal: str) -> str:
        return f"tools({goal})"

    @wf.task(when=lambda plan: len(plan) % 2 == 0)
    def act(plan: str, recall: str, tools: str) -> str:
        return "act"

    @wf.task(when=lambda plan: len(plan) % 2 == 1)
    def ask(plan: str, recall: str, tools: str) -> str:
        return "ask"

    @wf.task
    def join(act: str | None, ask: str | None) -> str:
        return f"{act}/{ask}"

    return wf


def define_echo(app: Orchestrator, name: str, queue: str) -> Workflow:
    """A one-step workflow on its own queue."""
    wf = Workflow(name, app=app, queue=queue)

    @wf.task
    def echo(x: int) -> int:
        return x

    return wf


def define_retrying(app: Orchestrator, backoff: float, attempts: list[int]) -> Workflow:
    """A step that fails its first attempt and waits ``backoff`` s for its second."""
    wf = Workflow("retrying", app=app)

    @wf.task(retries=1, backoff=backoff)
    def flaky(x: int, ctx: StepContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise OSError("first attempt fails")
        return x

    return wf


@dataclass
class Gate:
    """Hangs steps until released; counts how many are inside at once."""

    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    inside: int = 0
    most_inside: int = 0
    entered: int = 0

    def hang(self) -> None:
        """Wait inside until released (bounded, so a failing test cannot hang forever)."""
        with self.lock:
            self.inside += 1
            self.entered += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            self.release.wait(60)
        finally:
            with self.lock:
                self.inside -= 1


def define_hung(app: Orchestrator, gate: Gate, queue: str) -> Workflow:
    """A one-step workflow whose step hangs at ``gate`` until released."""
    wf = Workflow(f"hung_{queue.replace('.', '_')}", app=app, queue=queue)

    @wf.task
    def slow(x: int) -> int:
        gate.hang()
        return x

    return wf
