"""Workflows started by events, for the events tests (emit, CLI emit, stream consumers).

Imported by the test process and by the test's own worker (through ``ORCH_IMPORTS``).
Every step is quick: what is under test is which runs start, not what they do.
"""

from __future__ import annotations

from orchestration import Workflow

EVENTS_QUEUE = "it.events"
TICKET_CREATED = "it.ticket.created"
TICKET_UPDATED = "it.ticket.updated"
STREAM_ITEM = "it.stream.item"

tickets = Workflow("it_event_tickets", queue=EVENTS_QUEUE, inputs=["text", "ticket_id"])


@tickets.task
def classify(text: str, ticket_id: int) -> str:
    return f"{ticket_id}:{text}"


# new tickets only; the event id is the dedupe key
NEW_TICKET = tickets.on_event(
    TICKET_CREATED, name="it_new_ticket", filter={"$.ticket.status": "new"},
    inputs={"text": "$.ticket.description", "ticket_id": "$.ticket.id"})
# one run per ticket id, whatever the event ids of its updates
TICKET_UPDATE = tickets.on_event(
    TICKET_UPDATED, name="it_ticket_updated", dedupe="$.ticket.id",
    inputs={"text": "$.ticket.description", "ticket_id": "$.ticket.id"})

items = Workflow("it_event_items", queue=EVENTS_QUEUE, inputs=["n"])


@items.task
def double(n: int) -> int:
    return 2 * n


STREAM_TRIGGER = items.on_event(STREAM_ITEM, name="it_stream_item", inputs={"n": "$.n"})
