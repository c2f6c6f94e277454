"""The workflow of ``bench/webhooks.py``: one step on a queue no worker serves.

The bench measures how fast runs are *recorded* (row written, message published), so
nothing consumes queue ``bench.webhooks``; the bench deletes it at the end.
"""

from __future__ import annotations

from orchestration import Workflow

QUEUE = "bench.webhooks"
EVENT = "bench.ticket.created"

ticket = Workflow("bench_webhook_ticket", inputs=["ticket_id", "text"], queue=QUEUE)


@ticket.task
def classify(ticket_id: int, text: str) -> str:
    """Never runs in the bench."""
    return text


ticket.on_event(EVENT, inputs={"ticket_id": "$.ticket.id", "text": "$.ticket.description"},
                name="bench_ticket_hook")
