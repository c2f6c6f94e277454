"""The support-ticket workflow: classify -> urgency -> route -> draft a first reply.

Classification and urgency are local scikit-learn models (trained at first use on the
shipped labelled tickets); routing is a business rule; the reply is drafted by an LLM
through ``ctx.llm`` (with no provider configured, a clearly labelled local fallback; when
every model of its chain fails on every attempt, a labelled canned reply).
Each model has its own queue, so a slow LLM cannot starve the classifiers.
"""

from __future__ import annotations

from orchestration import StepContext, Workflow
from tasks.support.models import predict_category, predict_urgency

support = Workflow("support_ticket", inputs=["ticket_id", "text"], queue="default")

TEAMS = {
    "bug": "engineering",
    "feature_request": "product",
    "billing": "finance",
    "general": "support_tier_1",
}
ESCALATIONS = "escalations"
FALLBACK_LABEL = "[fallback reply: no model answered]"

REPLY_PROMPT = (
    "You are a customer-support agent. Write a short, friendly first response to this "
    "ticket, routed to the {team} team. Do not promise dates.\n\nTicket: {text}"
)


@support.task(retries=3, timeout=30, queue="model.classifier")
def classify_ticket(text: str) -> str:
    """The ticket's category: bug, feature_request, billing or general."""
    return predict_category(text).label


@support.task(depends_on=classify_ticket, retries=2, timeout=30, output="urgency",
              queue="model.urgency")
def extract_urgency(text: str, classify_ticket: str) -> str:
    """Urgency (low, medium, high, critical), from the text and the predicted category."""
    return predict_urgency(text, classify_ticket).label


@support.task(fallback=TEAMS["general"])
def route_to_team(classify_ticket: str, urgency: str) -> str:
    """The team that owns the ticket; critical tickets go to the escalations team."""
    if urgency == "critical":
        return ESCALATIONS
    return TEAMS[classify_ticket]


def fallback_reply(route_to_team: str, **_: object) -> str | None:
    """The reply when no model answered on any attempt: labelled, and promising a person."""
    if route_to_team == ESCALATIONS:
        return None
    return (f"{FALLBACK_LABEL} Thanks for contacting us. Your ticket is with the "
            f"{route_to_team} team, and a member of the team will reply shortly.")


@support.task(critical=False, model="gpt-4o-mini", retries=2, timeout=60,
              fallback=fallback_reply)
def generate_response(text: str, route_to_team: str, ctx: StepContext) -> str | None:
    """A first reply drafted by an LLM; None for escalations, which people answer."""
    if route_to_team == ESCALATIONS:
        return None
    return ctx.llm.complete(REPLY_PROMPT.format(team=route_to_team, text=text)).text
