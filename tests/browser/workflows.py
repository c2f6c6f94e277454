"""The workflows of the browser tests, imported by the served process (``ORCH_IMPORTS``).

``orchestrate serve`` runs them on its embedded worker; the tests start runs through the
served webhook (``POST /events/<name>``) and watch them in a real browser.

- ``dash_ticket``: classify, score and enrich in parallel (score fails its first attempt
  and is retried, enrich fails and its fallback answers), draft joins them with a model
  call;
- ``dash_review``: prepare, then approval waits for a person (approved from the run
  page), then publish streams a note from a model;
- ``dash_broken``: parse fails critically, so summarise is skipped.
"""

from __future__ import annotations

from typing import Any

from orchestration import Workflow

TICKET, REVIEW, BROKEN = "dash_ticket", "dash_review", "dash_broken"
TICKET_EVENT, REVIEW_EVENT, BROKEN_EVENT = "dash.ticket", "dash.review", "dash.broken"

ticket = Workflow(TICKET, inputs=["ticket_id", "text"])


@ticket.task
def classify(text: str) -> str:
    """A label for the ticket."""
    return "login" if "login" in text.lower() else "other"


@ticket.task(retries=2, backoff=0)
def score(text: str, ctx: Any) -> int:
    """Urgency; the first attempt fails (a retried step on the timeline)."""
    if ctx.attempt == 1:
        raise ConnectionError("the scorer was not reachable (first attempt)")
    return min(10, len(text) // 4)


@ticket.task(retries=0, fallback={"tags": []}, critical=False)
def enrich(ticket_id: int) -> dict[str, Any]:
    """Always fails: its fallback answers."""
    raise RuntimeError(f"no CRM record for ticket {ticket_id}")


@ticket.task(depends_on=[classify, score, enrich], model="gpt-4o-mini")
def draft(text: str, classify: str, score: int, enrich: dict[str, Any], ctx: Any) -> str:
    """The reply: a model call (no API key in the served process: the local provider
    answers offline, priced as gpt-4o-mini), so the page shows model, tokens and cost."""
    reply = ctx.llm.complete(f"Write a first response to this {classify} ticket: {text}")
    return f"[{classify}/{score}, {len(enrich['tags'])} tags] {reply.text[:80]}"


ticket.on_event(TICKET_EVENT, inputs={"ticket_id": "$.id", "text": "$.text"},
                name="dash_ticket_hook")

review = Workflow(REVIEW, inputs=["text"])


@review.task
def prepare(text: str) -> str:
    """A draft to review."""
    return text.strip().capitalize()


@review.task(depends_on=prepare)
def approval(prepare: str, ctx: Any) -> dict[str, Any]:
    """Waits for a person; what they sent becomes the output."""
    decision = ctx.wait_for_input("approval", timeout=3600)
    return {"draft": prepare, "decision": decision}


@review.task(depends_on=approval, model="gpt-4o-mini")
def publish(approval: dict[str, Any], ctx: Any) -> str:
    """Published when approved, with a note streamed from a model (its tokens reach the
    run's stream, and the run page, as they arrive)."""
    approved = isinstance(approval["decision"], dict) and approval["decision"].get("approved")
    note = "".join(ctx.llm.stream(f"One line announcing: {approval['draft']}"))
    return ("published: " if approved else "rejected: ") + approval["draft"] + f" ({note[:60]})"


review.on_event(REVIEW_EVENT, inputs={"text": "$.text"}, name="dash_review_hook")

broken = Workflow(BROKEN, inputs=["text"])


@broken.task(retries=0)
def parse(text: str) -> dict[str, Any]:
    """Fails: the document is not JSON."""
    raise ValueError(f"not a JSON document: {text[:20]!r}")


@broken.task(depends_on=parse)
def summarise(parse: dict[str, Any]) -> str:
    """Never runs (skipped)."""
    return str(parse)


broken.on_event(BROKEN_EVENT, inputs={"text": "$.text"}, name="dash_broken_hook")
