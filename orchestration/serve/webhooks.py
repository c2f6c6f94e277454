"""``POST /events/{name}``: a webhook delivers an event; its triggers start runs.

In order, before anything is recorded or started: the credentials (401), the body size
(413, enforced while reading), the signature over the raw body (401), the event name and
id (400) and the JSON body (400). Then the event is ingested like an ``emit`` (source
``webhook``): recorded in the events table, each trigger starting at most one run per
dedupe key, however many times and however concurrently it is delivered. The answer is
``202`` with each trigger's outcome.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from orchestration.define.triggers import event_name
from orchestration.errors import (
    InvalidInput,
    OrchestrationError,
    SubmitFailed,
    WorkflowDefinitionError,
)
from orchestration.events import EventOutcome
from orchestration.serve.auth import Verdict
from orchestration.serve.body import read_limited
from orchestration.serve.context import ServeContext

EVENT_ID_HEADERS = ("x-event-id", "idempotency-key")
_EVENT_ID = re.compile(r"[\x21-\x7e]{1,200}")  # visible ASCII: it is logged and stored


class EventsEndpoint:
    """The webhook endpoint of one served deployment."""

    def __init__(self, context: ServeContext) -> None:
        self.context = context

    async def post(self, request: Request) -> JSONResponse:
        """Authenticate, read, check and ingest one delivery; 202 with the outcomes."""
        credentials = self.context.credentials
        verdict = credentials.check_headers(request.headers)
        if verdict in (Verdict.MISSING, Verdict.BAD_TOKEN):
            raise _unauthorized("a bearer token that is not the configured one"
                                if verdict is Verdict.BAD_TOKEN else
                                "no credentials: send Authorization: Bearer <token> or "
                                "X-Orchestrate-Signature: sha256=<hmac of the body>")
        body = await read_limited(request, self.context.settings.webhook_max_bytes)
        if verdict is Verdict.NEEDS_BODY and not credentials.check_signature(
                request.headers, body):
            raise _unauthorized("the signature is not the HMAC-SHA256 of the body under "
                                "the configured secret")
        name = _name(request.path_params["name"])
        event_id = _event_id(request)
        payload = _payload(body)
        try:
            outcomes = await run_in_threadpool(
                self.context.ingest, self.context.orchestrator, name, payload,
                event_id=event_id, source="webhook")
        except InvalidInput as exc:
            raise HTTPException(400, str(exc)) from exc
        except SubmitFailed as exc:
            raise HTTPException(503, str(exc)) from exc
        except OrchestrationError as exc:
            raise HTTPException(500, f"{type(exc).__name__}: {exc}") from exc
        return JSONResponse({"event": name, "event_id": event_id,
                             "outcomes": [_outcome(item) for item in outcomes]},
                            status_code=202)


def routes(context: ServeContext) -> list[BaseRoute]:
    """The webhook routes."""
    return [Route("/events/{name}", EventsEndpoint(context).post, methods=["POST"])]


def _unauthorized(why: str) -> HTTPException:
    return HTTPException(401, f"unauthorized: {why}", headers={"WWW-Authenticate": "Bearer"})


def _name(value: str) -> str:
    try:
        return event_name(value, "the event name in the URL")
    except WorkflowDefinitionError as exc:
        raise HTTPException(400, str(exc)) from None


def _event_id(request: Request) -> str:
    for header in EVENT_ID_HEADERS:
        value = request.headers.get(header)
        if value is not None:
            if not _EVENT_ID.fullmatch(value):
                raise HTTPException(400, f"{header}: an event id is 1-200 visible ASCII "
                                         f"characters, got {value[:60]!r}")
            return value
    return str(uuid.uuid4())


def _payload(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"the body is not UTF-8 JSON: {exc}") from None
    if not text.strip():
        raise HTTPException(400, "the body is empty: send the event as a JSON document")
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as exc:
        raise HTTPException(400, f"the body is not JSON: {exc}") from None


def _outcome(item: EventOutcome) -> dict[str, Any]:
    answer: dict[str, Any] = {"trigger": item.trigger, "outcome": _kind(item),
                              "run_id": item.run_id}
    if item.reason:
        answer["reason"] = item.reason
    return answer


def _kind(item: EventOutcome) -> str:
    return str(getattr(item.outcome, "value", item.outcome))


def _not_json(constant: str) -> Any:
    # Python reads NaN and Infinity; JSON (and the results DB) has no such numbers.
    raise ValueError(f"{constant} is not a JSON number")
