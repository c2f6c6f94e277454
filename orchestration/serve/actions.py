"""Approve a waiting run, cancel a run, resume a failed one: from the run page or the API.

Every action is authenticated (:class:`~orchestration.serve.session.Access`), CSRF-checked
unless it came with a bearer token, and recorded twice: an audit line (structlog,
``orchestration.serve.audit``: action, run, who, from where, outcome; never the data or a
credential) and a row of the events table (``dashboard.<action>``, source ``dashboard``).
The run page posts an ordinary form and is redirected back (303); the API takes JSON.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qs

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request

from orchestration.app import Orchestrator
from orchestration.core.clock import utcnow
from orchestration.core.results import cancel_run
from orchestration.errors import NoWaitingInput, OrchestrationError, RunNotFound
from orchestration.serve.body import read_limited
from orchestration.serve.session import Principal
from orchestration.store.events import EventRecord

ACTIONS = ("approve", "cancel", "resume")
audit = structlog.get_logger("orchestration.serve.audit")


class ActionRefused(Exception):
    """An action that could not be done: the HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def perform(orchestrator: Orchestrator, action: str, run_id: str,
            fields: dict[str, Any]) -> dict[str, Any]:
    """Do ``action`` on ``run_id`` (blocking: call it in a thread); what it did."""
    store = orchestrator.store
    try:
        status = store.run_status(run_id)
        if action == "approve":
            workflow = orchestrator.workflows.get(store.get_run(run_id).workflow)
            if workflow is not None:  # the embedded worker serves its queues
                orchestrator.before_dispatch(workflow.validate())
            count = orchestrator.approve(run_id, fields.get("data"), fields.get("name"))
            return {"delivered_to": count}
        if action == "cancel":
            if status.is_terminal:
                raise ActionRefused(409, f"run {run_id} already ended {status.value}")
            return {"cancelled": cancel_run(store, run_id)}
        orchestrator.resume(run_id, fields.get("inputs"))
        return {"resumed": run_id}
    except RunNotFound as exc:
        raise ActionRefused(404, str(exc)) from exc
    except NoWaitingInput as exc:
        raise ActionRefused(409, str(exc)) from exc
    except OrchestrationError as exc:
        raise ActionRefused(409, f"{type(exc).__name__}: {exc}") from exc


async def run_action(orchestrator: Orchestrator, request: Request, principal: Principal,
                     action: str, run_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Perform and record an action; :class:`ActionRefused` when it could not be done."""
    try:
        result = await run_in_threadpool(perform, orchestrator, action, run_id, fields)
    except ActionRefused as exc:
        await _record(orchestrator, request, principal, action, run_id, fields, str(exc))
        raise
    await _record(orchestrator, request, principal, action, run_id, fields, None)
    return result


async def _record(orchestrator: Orchestrator, request: Request, principal: Principal,
                  action: str, run_id: str, fields: dict[str, Any], refused: str | None) -> None:
    client = request.client.host if request.client else None
    who = principal.describe()
    outcome = "refused" if refused else "done"
    audit.info("dashboard action", action=action, run_id=run_id, by=who, client=client,
               outcome=outcome, reason=refused, input=fields.get("name"))
    record = EventRecord(event_id=f"dashboard-{uuid.uuid4()}", name=f"dashboard.{action}",
                         source="dashboard", payload={"by": who, "client": client,
                                                      "input": fields.get("name")},
                         received_at=utcnow(), outcome=outcome, run_id=run_id,
                         reason=refused[:500] if refused else None)
    try:
        await run_in_threadpool(orchestrator.store.events.record, [record])
    except Exception:  # the audit line above stands; the action itself is done
        audit.exception("could not record the dashboard action in the events table",
                        action=action, run_id=run_id)


def check_action(action: str) -> str:
    """One of :data:`ACTIONS` (404 otherwise)."""
    if action not in ACTIONS:
        raise HTTPException(404, f"no action {action[:40]!r}: one of {', '.join(ACTIONS)}")
    return action


async def form_fields(request: Request, limit: int) -> tuple[dict[str, Any], str | None]:
    """A posted form's fields as the action takes them, and its CSRF field."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "post the form as application/x-www-form-urlencoded")
    body = await read_limited(request, limit)
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"the form cannot be read: {exc}") from None
    form = {key: values[0] for key, values in parsed.items()}
    fields: dict[str, Any] = {"name": form.get("name") or None}
    if "data" in form:
        fields["data"] = _json("data", form["data"] or "null")
    if form.get("inputs", "").strip():
        fields["inputs"] = _object("inputs", _json("inputs", form["inputs"]))
    return fields, form.get("csrf")


async def json_fields(request: Request, limit: int) -> tuple[dict[str, Any], str | None]:
    """An API request's JSON body (``{"data", "name"}`` or ``{"inputs"}``; may be empty)."""
    body = await read_limited(request, limit)
    value = _json("the body", body.decode("utf-8", "replace")) if body.strip() else {}
    value = _object("the body", value)
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        raise HTTPException(400, f"name: the input's name as a string, got {name!r:.60}")
    fields: dict[str, Any] = {"name": name, "data": value.get("data")}
    if value.get("inputs") is not None:
        fields["inputs"] = _object("inputs", value["inputs"])
    return fields, None


def _json(what: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise HTTPException(400, f"{what}: not JSON ({exc})") from None


def _object(what: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise HTTPException(400, f"{what}: a JSON object, got {type(value).__name__}")
    return value
