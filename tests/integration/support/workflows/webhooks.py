"""The workflow of the webhook tests (``test_webhooks.py``), imported by the served process.

``orchestrate serve`` imports this module (``ORCH_IMPORTS``) and runs the workflow on its
embedded worker; the test process only reads the results database.
"""

from __future__ import annotations

from orchestration import Workflow

EVENT = "it.webhook.ticket.created"  # only this module listens (the events tests share the session)
WORKFLOW = "it_webhook_ticket"

ticket = Workflow(WORKFLOW, inputs=["ticket_id", "text"])


@ticket.task
def shout(ticket_id: int, text: str) -> str:
    """What the run did with the payload's values."""
    return f"{ticket_id}:{text.upper()}"


ticket.on_event(EVENT, inputs={"ticket_id": "$.ticket.id", "text": "$.ticket.description"},
                name="it_ticket_hook")
