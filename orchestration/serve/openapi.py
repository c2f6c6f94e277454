"""The OpenAPI 3.1 document of ``orchestrate serve``, written out (no generator).

It describes the JSON API (:mod:`.api`), the run stream (server-sent events) and the
event webhook; ``tests/unit/serve`` checks that every route of the app is in it and that
it is a valid OpenAPI document.
"""

from __future__ import annotations

from typing import Any

NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
NULLABLE_NUM: dict[str, Any] = {"type": ["number", "null"]}
TIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
RUN_STATUS = ["pending", "running", "waiting", "succeeded", "failed", "cancelled"]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], what: str) -> dict[str, Any]:
    return {"200": {"description": what, "content": {"application/json": {"schema": schema}}},
            "401": _error("no or wrong credentials"), "400": _error("a bad parameter")}


def _error(what: str) -> dict[str, Any]:
    return {"description": what,
            "content": {"application/json": {"schema": _ref("Error")}}}


def _query(name: str, description: str, enum: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if enum:
        schema["enum"] = enum
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


WINDOW = "a window such as 30m, 6h or 7d (that long ago), an ISO time, or all"

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "properties": {"error": {"type": "string"}},
              "required": ["error"]},
    "RunSummary": {"type": "object", "properties": {
        "run_id": {"type": "string"}, "workflow": {"type": "string"},
        "status": {"type": "string", "enum": RUN_STATUS}, "created_at": TIME,
        "finished_at": TIME, "duration_s": NULLABLE_NUM, "cost_usd": {"type": "number"},
        "error": NULLABLE_STR}},
    "RunPage": {"type": "object", "properties": {
        "runs": {"type": "array", "items": _ref("RunSummary")},
        "page": {"type": "integer"}, "per_page": {"type": "integer"},
        "has_next": {"type": "boolean"}, "filters": {"type": "object"},
        "workflows": {"type": "array", "items": {"type": "string"}}}},
    "Graph": {"type": "object", "properties": {
        "nodes": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "status": {"type": "string"},
            "queue": NULLABLE_STR, "kind": {"type": "string"}}}},
        "edges": {"type": "array", "items": {"type": "array", "items": {"type": "string"},
                                             "minItems": 2, "maxItems": 2}},
        "known": {"type": "boolean", "description": "the workflow is registered here"}}},
    "Step": {"type": "object", "description": "a step as stored (inputs/outputs redacted)",
             "properties": {
                 "name": {"type": "string"}, "status": {"type": "string"},
                 "output_name": NULLABLE_STR, "output": {}, "inputs": {},
                 "error": NULLABLE_STR, "error_type": NULLABLE_STR, "model": NULLABLE_STR,
                 "queue": NULLABLE_STR, "worker": NULLABLE_STR,
                 "attempts": {"type": "integer"}, "latency_ms": NULLABLE_NUM,
                 "cost_usd": {"type": "number"}, "tokens_in": {"type": "integer"},
                 "tokens_out": {"type": "integer"}, "gate": NULLABLE_STR,
                 "started_at": TIME, "finished_at": TIME,
                 "attempt_log": {"type": "array", "items": {"type": "object"}}}},
    "Run": {"type": "object", "properties": {
        "run_id": {"type": "string"}, "workflow": {"type": "string"},
        "status": {"type": "string", "enum": RUN_STATUS}, "error": NULLABLE_STR,
        "cost_usd": {"type": "number"}, "tokens_in": {"type": "integer"},
        "tokens_out": {"type": "integer"}, "created_at": TIME, "started_at": TIME,
        "finished_at": TIME, "duration_s": NULLABLE_NUM, "parent_run_id": NULLABLE_STR,
        "inputs": {"type": "object"}, "terminal": {"type": "boolean"},
        "waiting": {"type": "array", "items": {"type": "string"}},
        "graph": _ref("Graph"), "steps": {"type": "array", "items": _ref("Step")}}},
    "WorkflowStats": {"type": "object", "properties": {
        "workflow": {"type": "string"}, "since": {"type": "string"},
        "runs": {"type": "integer"}, "runs_by_status": {"type": "object"},
        "cost_per_run": {"type": "number"}, "fallback_rate": {"type": "number"},
        "steps": {"type": "array", "items": {"type": "object", "properties": {
            "step": {"type": "string"}, "runs": {"type": "integer"},
            "p50_ms": NULLABLE_NUM, "p95_ms": NULLABLE_NUM, "p99_ms": NULLABLE_NUM,
            "retries": {"type": "integer"}, "fallbacks": {"type": "integer"},
            "fallback_rate": {"type": "number"}, "failed": {"type": "integer"},
            "skipped": {"type": "integer"}, "cost_usd": {"type": "number"}}}},
        "models": {"type": "array", "items": {"type": "object", "properties": {
            "model": {"type": "string"}, "attempts": {"type": "integer"},
            "failed": {"type": "integer"}, "error_rate": {"type": "number"}}}},
        "graph": _ref("Graph")}},
    "Breakers": {"type": "object", "properties": {
        "shared": {"type": "boolean"}, "recent_window_s": {"type": "number"},
        "models": {"type": "array", "items": {"type": "object", "properties": {
            "model": {"type": "string"}, "in_catalogue": {"type": "boolean"},
            "state": {"type": "string", "enum": ["closed", "open", "half-open", "unknown"]},
            "failures": {"type": ["integer", "null"]}, "opened_at": TIME,
            "recent_failures": {"type": "array", "items": {"type": "object"}}}}}}},
    "Queues": {"type": "object", "properties": {
        "queues": {"type": "array", "items": {"type": "object", "properties": {
            "queue": {"type": "string"}, "waiting": {"type": ["integer", "null"]}}}},
        "problem": NULLABLE_STR}},
    "ActionBody": {"type": "object", "properties": {
        "data": {"description": "approve: the input (any JSON)"},
        "name": {"type": ["string", "null"], "description": "approve: which input"},
        "inputs": {"type": ["object", "null"], "description": "resume: inputs to give again"}}},
    "ActionResult": {"type": "object", "properties": {
        "action": {"type": "string"}, "run_id": {"type": "string"},
        "result": {"type": "object"}}},
}


def openapi_schema() -> dict[str, Any]:
    """The document served at ``/openapi.json``."""
    run_id = _path("run_id")
    return {
        "openapi": "3.1.0",
        "info": {"title": "orchestrate serve", "version": "1",
                 "description": "Runs, workflows, breakers and queues of one deployment; "
                                "actions on runs; each run's live stream. Authenticate with "
                                "ORCH_SERVE_TOKEN as a bearer token (or basic auth)."},
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {"type": "http", "scheme": "basic"},
            "hmac": {"type": "apiKey", "in": "header", "name": "X-Orchestrate-Signature",
                     "description": "sha256=<hex HMAC-SHA256 of the body>"}}},
        "security": [{"bearer": []}, {"basic": []}],
        "paths": {
            "/api/runs": {"get": {
                "summary": "Runs, newest first, a page at a time", "operationId": "listRuns",
                "parameters": [_query("workflow", "only this workflow"),
                               _query("status", "only this status", RUN_STATUS),
                               _query("since", f"created since: {WINDOW}"),
                               _query("until", f"created before: {WINDOW}"),
                               _query("page", "1-based page (50 runs a page)")],
                "responses": _ok(_ref("RunPage"), "a page of runs")}},
            "/api/runs/{run_id}": {"get": {
                "summary": "A run: graph, steps, attempts", "operationId": "getRun",
                "parameters": [run_id],
                "responses": {**_ok(_ref("Run"), "the run"), "404": _error("no such run")}}},
            "/api/runs/{run_id}/{action}": {"post": {
                "summary": "Approve a waiting run, cancel a run, or resume a failed one",
                "operationId": "actOnRun",
                "parameters": [run_id, {"name": "action", "in": "path", "required": True,
                                        "schema": {"type": "string", "enum": [
                                            "approve", "cancel", "resume"]}}],
                "requestBody": {"required": False, "content": {
                    "application/json": {"schema": _ref("ActionBody")}}},
                "responses": {**_ok(_ref("ActionResult"), "done"),
                              "403": _error("a cross-site request or no CSRF token "
                                            "(basic auth)"),
                              "404": _error("no such run"),
                              "409": _error("the run is not in a state for it")}}},
            "/runs/{run_id}/events": {"get": {
                "summary": "The run's live stream (server-sent events)",
                "description": "Each event: `id:` its offset in the run's durable stream "
                               "(absent for `snapshot` events), `data:` one JSON object with "
                               "a `type`. Resume with `Last-Event-ID` or `?after=`.",
                "operationId": "streamRun",
                "parameters": [run_id, _query("after", "resume after this offset")],
                "responses": {"200": {"description": "the stream", "content": {
                    "text/event-stream": {"schema": {"type": "string"}}}},
                    "404": _error("no such run")}}},
            "/api/workflows": {"get": {
                "summary": "Workflows registered or seen", "operationId": "listWorkflows",
                "responses": _ok({"type": "object", "properties": {"workflows": {
                    "type": "array", "items": {"type": "string"}}}}, "names")}},
            "/api/workflows/{name}": {"get": {
                "summary": "p50/p95 per step, error rate per model, cost per run, fallbacks",
                "operationId": "workflowStats",
                "parameters": [_path("name"), _query("since", f"window: {WINDOW}")],
                "responses": _ok(_ref("WorkflowStats"), "the figures")}},
            "/api/breakers": {"get": {
                "summary": "Each model's breaker and recent failed calls",
                "operationId": "breakers", "responses": _ok(_ref("Breakers"), "breakers")}},
            "/api/queues": {"get": {
                "summary": "Messages waiting per queue", "operationId": "queues",
                "responses": _ok(_ref("Queues"), "depths")}},
            "/events/{name}": {"post": {
                "summary": "Deliver an event (webhook); its triggers start runs",
                "operationId": "postEvent", "parameters": [_path("name")],
                "security": [{"bearer": []}, {"hmac": []}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {}}}},
                "responses": {"202": {"description": "each trigger's outcome"},
                              "401": _error("no or wrong credentials or signature"),
                              "413": _error("the body is too large")}}},
        },
    }
