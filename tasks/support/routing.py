"""Support routing: each category of ticket goes to its own sub-workflow, critical ones
to a person.

``route_ticket`` classifies and scores the ticket (the local models of the support
workflow); ``billing``, ``technical`` and ``general`` each start a small sub-workflow
as a child run when selected; ``human_review`` parks the run until a person approves
critical tickets (``orchestrate approve RUN_ID --data '{"assignee": "..."}'``), and
escalates to the on-call queue if nobody answers within the hour.
"""

from __future__ import annotations

from typing import Any

from orchestration import StepContext, Workflow
from tasks.support.models import predict_category, predict_urgency

REVIEW_TIMEOUT_S = 3600.0

# -- the three sub-workflows -------------------------------------------------------------

billing_flow = Workflow("support_billing", inputs=["text"], queue="default")


@billing_flow.task
def find_invoice(text: str) -> str:
    """The invoice the ticket is about (a reference for the finance team)."""
    digits = "".join(ch for ch in text if ch.isdigit())[:8]
    return f"INV-{digits or 'unknown'}"


@billing_flow.task
def billing_reply(find_invoice: str) -> str:
    """The billing team's first answer."""
    return f"Finance will review {find_invoice} within one business day."


technical_flow = Workflow("support_technical", inputs=["text"], queue="default")


@technical_flow.task
def collect_diagnostics(text: str) -> dict[str, Any]:
    """What engineering needs: version mentioned and whether it blocks the user."""
    words = text.lower().split()
    version = next((w.strip(".,") for w in words if w.startswith("v") and any(
        c.isdigit() for c in w)), None)
    return {"version": version, "blocking": any(w in words for w in ("can't", "cannot",
                                                                     "down", "crash"))}


@technical_flow.task
def open_bug(collect_diagnostics: dict[str, Any]) -> str:
    """The engineering ticket to open."""
    severity = "S2" if collect_diagnostics["blocking"] else "S3"
    return f"{severity} bug for version {collect_diagnostics['version'] or 'unknown'}"


general_flow = Workflow("support_general", inputs=["text"], queue="default")


@general_flow.task
def faq_answer(text: str) -> str:
    """A pointer to the help centre."""
    return "See our help centre for answers to common questions."


# -- the routing workflow ----------------------------------------------------------------

routing = Workflow("support_routing", inputs=["ticket_id", "text"], queue="default")


@routing.task(queue="model.classifier")
def route_ticket(text: str) -> dict[str, str]:
    """Category and urgency of the ticket."""
    category = predict_category(text).label
    return {"category": category, "urgency": predict_urgency(text, category).label}


def _is(category: str) -> Any:
    return lambda route_ticket: (route_ticket["urgency"] != "critical"
                                 and route_ticket["category"] == category)


@routing.task(when=_is("billing"))
def billing(text: str, ctx: StepContext) -> Any:
    """Billing tickets: the billing sub-workflow."""
    return ctx.run_child(billing_flow, text=text)


@routing.task(when=lambda route_ticket: route_ticket["urgency"] != "critical"
              and route_ticket["category"] in ("bug", "feature_request"))
def technical(text: str, ctx: StepContext) -> Any:
    """Bugs and feature requests: the technical sub-workflow."""
    return ctx.run_child(technical_flow, text=text)


@routing.task(when=_is("general"))
def general(text: str, ctx: StepContext) -> Any:
    """Everything else: the general sub-workflow."""
    return ctx.run_child(general_flow, text=text)


@routing.task(when=lambda route_ticket: route_ticket["urgency"] == "critical",
              fallback={"assignee": "on-call", "escalated": True})
def human_review(ticket_id: int, ctx: StepContext) -> dict[str, Any]:
    """Critical tickets wait for a person to take them (on-call if nobody does in time)."""
    decision = ctx.wait_for_input("review", timeout=REVIEW_TIMEOUT_S)
    return {"assignee": decision.get("assignee", "unassigned"), "escalated": False,
            "ticket_id": ticket_id}


@routing.task
def resolution(billing: Any, technical: Any, general: Any, human_review: Any) -> dict[str, Any]:
    """What happened to the ticket: the branch taken and its result."""
    for branch, value in (("billing", billing), ("technical", technical),
                          ("general", general), ("human_review", human_review)):
        if value is not None:
            return {"branch": branch, "result": value}
    return {"branch": "none", "result": None}
