"""Support intake by intent: a semantic router picks the branch or sub-workflow of a message.

The router learns from the labelled utterances in ``data/intents.yaml`` (billing,
technical, account, general); a message whose best intent scores under ``THRESHOLD``
goes to ``general``. Two shapes of the same router:

- ``intake``: branches. ``route_intent`` outputs its decision; ``billing`` and
  ``technical`` start the sub-workflows of ``tasks/support/routing.py`` as child runs
  (``when=route_intent.chose(...)``), ``self_service`` answers account and general
  messages; the branches not chosen are recorded skipped ("not selected").
- ``dispatch``: ``routes=``. The router starts the chosen workflow as a child run and
  outputs the child's outputs.

Measured on the held-out messages of ``data/intents_heldout.yaml`` (48, never trained
on) by ``tests/unit/tasks/test_support_intents.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from orchestration import StepContext, Workflow
from tasks.support.routing import billing_flow, general_flow, technical_flow

DATA: Final = Path(__file__).resolve().parent / "data"
INTENTS_FILE: Final = DATA / "intents.yaml"
HELDOUT_FILE: Final = DATA / "intents_heldout.yaml"
METHOD: Final = "classifier"  # logistic regression on TF-IDF (see docs/throughput.md)
THRESHOLD: Final = 0.4

# -- the account sub-workflow (the others are routing.py's) -------------------------------

account_flow = Workflow("support_account", inputs=["text"], queue="default")


@account_flow.task
def account_reply(text: str) -> str:
    """Account changes are self-service: point to the settings page."""
    return "You can change this under Settings > Account; reply here if it does not work."


# -- intake: the router's decision selects a branch ----------------------------------------

intake = Workflow("support_intake", inputs=["text"], queue="default")

route_intent = intake.router(
    "route_intent", text="text", examples=INTENTS_FILE, method=METHOD, threshold=THRESHOLD,
    default="general")


@intake.task(when=route_intent.chose("billing"))
def billing(text: str, ctx: StepContext) -> Any:
    """Billing messages: the billing sub-workflow."""
    return ctx.run_child(billing_flow, text=text)


@intake.task(when=route_intent.chose("technical"))
def technical(text: str, ctx: StepContext) -> Any:
    """Technical messages: the technical sub-workflow."""
    return ctx.run_child(technical_flow, text=text)


@intake.task(when=route_intent.chose("account", "general"))
def self_service(route_intent: dict[str, Any]) -> dict[str, str]:
    """Account and general messages: an answer pointing to self-service."""
    page = "Settings > Account" if route_intent["route"] == "account" else "the help centre"
    return {"route": route_intent["route"], "reply": f"See {page}."}


# -- dispatch: the router starts the chosen sub-workflow itself -----------------------------

dispatch = Workflow("support_dispatch", inputs=["text"], queue="default")

dispatch_intent = dispatch.router(
    "dispatch_intent", text="text", examples=INTENTS_FILE, method=METHOD, threshold=THRESHOLD,
    default="general",
    routes={"billing": billing_flow, "technical": technical_flow, "account": account_flow,
            "general": general_flow})
