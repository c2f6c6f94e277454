"""``orchestrate graph`` draws a semantic router with its labels, and a router with
``routes=`` as a step that starts a child run."""

from __future__ import annotations

from pathlib import Path

from orchestration import Workflow
from orchestration.cli.graph import mermaid
from orchestration.testing import embedded_orchestrator

EXAMPLES = {"billing": ["charged twice"], "general": ["opening hours"]}


def test_a_router_is_drawn_with_its_labels(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path) as app:
        child = Workflow("graph_child", app=app, inputs=["text"])

        @child.task
        def reply(text: str) -> str:
            return text

        branches = Workflow("graph_branches", app=app, inputs=["text"])
        router = branches.router("route", text="text", examples=EXAMPLES, default="general")

        @branches.task(when=router.chose("billing"))
        def billing(text: str) -> str:
            return text

        routed = Workflow("graph_routes", app=app, inputs=["text"])
        routed.router("route", text="text", examples=EXAMPLES, default="general",
                      routes={"billing": child, "general": child})
        queue = app.settings.default_queue
        drawn = mermaid(branches.validate())
        assert f'route["route<br/>{queue}<br/>routes by intent: billing / general"]' in drawn
        assert "route --> billing" in drawn
        assert (f'route[/"route<br/>{queue}<br/>routes by intent: billing / general<br/>'
                'starts a child run"/]') in mermaid(routed.validate())
