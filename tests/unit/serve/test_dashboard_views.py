"""What the dashboard shows: runs filtered and paged, a run's DAG/timeline/steps, every
text escaped, the OpenAPI document covering the API, the run stream as SSE (resumable)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from starlette.routing import Route

from orchestration.core.clock import utcnow
from orchestration.core.stream_events import RUN_FINISHED, STEP_FINISHED, STEP_STARTED, event
from orchestration.serve import live
from orchestration.serve.openapi import openapi_schema
from orchestration.serve.svg import NODE_H, NODE_W, layout
from tests.unit.serve.dashboard_support import Client, bearer, dashboard, write_run

MARKUP = '<script>alert("x")</script><img src=x onerror=alert(1)>'
TOKEN = {"serve_token": "dash-t0ken-for-tests"}


def test_every_text_of_a_run_is_escaped(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, **TOKEN)
    run_id = write_run(orchestrator, f"flow{MARKUP}", status="failed",
                       steps={f"step{MARKUP}": "failed", "after": "skipped"},
                       error=f"boom {MARKUP}", output={"html": MARKUP})
    client = Client(app)
    for path in (f"/runs/{run_id}", f"/runs/{run_id}/live", "/runs",
                 f"/workflows/{quote(f'flow{MARKUP}', safe='')}"):
        page = client.get(path, headers=bearer())
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
    page = client.get(f"/runs/{run_id}", headers=bearer()).text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_a_run_page_draws_each_step_with_its_status(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, **TOKEN)
    run_id = write_run(orchestrator, "unknown_here", status="running",
                       steps={"a": "succeeded", "b": "failed", "c": "running", "d": "pending"})
    page = Client(app).get(f"/runs/{run_id}", headers=bearer()).text
    for step, status in (("a", "succeeded"), ("b", "failed"), ("c", "running"),
                         ("d", "pending")):
        assert f'class="node status-{status} kind-step" data-step="{step}"' in page
        assert f'id="step-{step}" data-step="{step}" data-status="{status}"' in page
    assert page.count('<g class="row"') == 3  # the three steps that started
    assert page.count('class="attempt status-') == 2  # a and b recorded attempts
    assert 'id="cancel"' in page and 'id="resume"' not in page


def test_the_api_gives_the_run_with_graph_steps_and_attempts(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, **TOKEN)
    run_id = write_run(orchestrator, "flow", status="failed",
                       steps={"a": "succeeded", "b": "failed"}, error="bad")
    run = Client(app).get(f"/api/runs/{run_id}", headers=bearer()).json()
    assert run["status"] == "failed" and run["terminal"] is True
    assert run["graph"]["known"] is False  # this process does not know the workflow
    assert [(n["name"], n["status"]) for n in run["graph"]["nodes"]] == [
        ("a", "succeeded"), ("b", "failed")]
    failed = run["steps"][1]
    assert failed["error"] == "bad" and failed["attempt_log"][0]["status"] == "failed"


def test_runs_are_filtered_and_paged(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, **TOKEN)
    now = utcnow()
    old = write_run(orchestrator, "other", status="failed", created=now - timedelta(days=3))
    for minute in range(52):
        write_run(orchestrator, "flow", created=now - timedelta(minutes=minute))
    client = Client(app)

    def runs(query: str) -> dict[str, Any]:
        answer = client.get(f"/api/runs?{query}", headers=bearer())
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    first, second = runs("workflow=flow"), runs("workflow=flow&page=2")
    assert (len(first["runs"]), first["has_next"]) == (50, True)
    assert (len(second["runs"]), second["has_next"]) == (2, False)
    assert first["runs"][0]["created_at"] > first["runs"][-1]["created_at"]
    assert [r["run_id"] for r in runs("status=failed")["runs"]] == [old]
    assert len(runs("since=1d")["runs"]) == 50 and not runs("since=1d&workflow=other")["runs"]
    until = urlencode({"until": (now - timedelta(days=1)).isoformat()})
    assert [r["run_id"] for r in runs(until)["runs"]] == [old]
    assert runs("")["workflows"] == ["flow", "other"]
    page = client.get("/runs?workflow=flow", headers=bearer()).text
    assert 'rel="next" href="/runs?workflow=flow&amp;page=2"' in page


@pytest.mark.parametrize(("query", "named"), [
    ("status=done", "status='done'"), ("since=yesterday", "since='yesterday'"),
    ("page=0", "page='0'"), ("until=3x", "until='3x'")])
def test_a_bad_filter_is_a_400_naming_it(tmp_path: Path, query: str, named: str) -> None:
    app, _ = dashboard(tmp_path, **TOKEN)
    client = Client(app)
    answer = client.get(f"/api/runs?{query}", headers=bearer())
    assert answer.status_code == 400 and named in answer.json()["error"]
    page = client.get(f"/runs?{query}", headers=bearer())
    assert page.status_code == 400 and named.replace("'", "&#x27;") in page.text


def test_the_openapi_document_covers_every_api_route(tmp_path: Path) -> None:
    app, _ = dashboard(tmp_path, **TOKEN)
    schema = Client(app).get("/openapi.json", headers=bearer()).json()
    assert schema == json.loads(json.dumps(openapi_schema()))
    assert schema["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, item in schema["paths"].items()
                  for method in item}
    routes = [route for route in app.routes if isinstance(route, Route)
              and (route.path.startswith(("/api/", "/events/"))
                   or route.path.endswith("/events"))]
    served = {(re.sub(r":\w+}", "}", route.path), method) for route in routes
              for method in route.methods or () if method != "HEAD"}
    assert served <= documented, served - documented
    assert {ref.rsplit("/", 1)[1] for ref in _refs(schema)} <= set(schema["components"]["schemas"])


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if "$ref" in value else []
        return found + [ref for item in value.values() for ref in _refs(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _refs(item)]
    return []


def _sse(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines()
                     if not line.startswith(":") and ": " in line)
        if "data" in lines:
            events.append((lines.get("id"), json.loads(lines["data"])))
    return events


def test_the_stream_of_a_finished_run_replays_and_resumes_after_an_offset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "POLL_S", 0.01)
    app, orchestrator = dashboard(tmp_path, **TOKEN)
    run_id = write_run(orchestrator, "flow", steps={"a": "succeeded"})
    offsets = orchestrator.run_stream.append_many(run_id, [
        event(STEP_STARTED, run_id, step="a", attempt=1),
        event(STEP_FINISHED, run_id, step="a", status="succeeded"),
        event(RUN_FINISHED, run_id, status="succeeded")])
    client = Client(app)
    answer = client.get(f"/runs/{run_id}/events", headers=bearer())
    assert answer.headers["content-type"].startswith("text/event-stream")
    stream = [(offset, data["type"]) for offset, data in _sse(answer.text)
              if offset is not None]
    assert stream == list(zip(offsets, [STEP_STARTED, STEP_FINISHED, RUN_FINISHED],
                              strict=True))
    snapshots = [data for offset, data in _sse(answer.text) if offset is None]
    assert all(s["type"] == "snapshot" for s in snapshots)
    resumed = client.get(f"/runs/{run_id}/events",
                         headers={**bearer(), "Last-Event-ID": offsets[0]})
    assert [o for o, _ in _sse(resumed.text) if o is not None] == offsets[1:]
    after = client.get(f"/runs/{run_id}/events?after={offsets[1]}", headers=bearer())
    assert [o for o, _ in _sse(after.text) if o is not None] == offsets[2:]


def test_with_the_stream_off_the_poll_alone_reports_and_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "POLL_S", 0.01)
    app, orchestrator = dashboard(tmp_path, stream=False, **TOKEN)
    run_id = write_run(orchestrator, "flow", status="failed",
                       steps={"a": "succeeded", "b": "failed"}, error="bad")
    events = _sse(Client(app).get(f"/runs/{run_id}/events", headers=bearer()).text)
    assert [(offset, data["type"]) for offset, data in events] == [
        (None, "snapshot"), (None, RUN_FINISHED)]
    assert events[0][1]["steps"] == {"a": {"status": "succeeded", "attempts": 1},
                                     "b": {"status": "failed", "attempts": 1}}
    assert events[1][1]["status"] == "failed"


def test_a_bad_resume_offset_is_refused(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, **TOKEN)
    run_id = write_run(orchestrator, "flow")
    answer = Client(app).get(f"/runs/{run_id}/events",
                             headers={**bearer(), "Last-Event-ID": "x" * 200})
    assert answer.status_code == 400


def test_the_layout_puts_each_step_right_of_its_dependencies_without_overlap() -> None:
    names = ["fetch", "classify", "score", "enrich", "draft", "notify"]
    edges = [["fetch", "classify"], ["fetch", "score"], ["fetch", "enrich"],
             ["classify", "draft"], ["score", "draft"], ["enrich", "draft"],
             ["draft", "notify"], ["fetch", "notify"]]
    spots = layout(names, edges)
    for up, down in edges:
        assert spots[up][0] + NODE_W < spots[down][0]
    boxes = list(spots.values())
    for i, (x1, y1) in enumerate(boxes):
        for x2, y2 in boxes[i + 1:]:
            assert abs(x1 - x2) >= NODE_W or abs(y1 - y2) >= NODE_H
    assert layout(names, edges) == spots  # deterministic


class _Broken:
    """A registered workflow whose graph no longer compiles."""

    def validate(self) -> None:
        raise ValueError("dependency cycle: a -> a")


def test_a_workflow_that_does_not_compile_shows_its_recorded_steps(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, **TOKEN)
    orchestrator.workflows["broken"] = _Broken()  # type: ignore[assignment]
    run_id = write_run(orchestrator, "broken", steps={"a": "succeeded"})
    run = Client(app).get(f"/api/runs/{run_id}", headers=bearer()).json()
    assert run["graph"] == {"nodes": [{"name": "a", "queue": "default", "kind": "step",
                                       "status": "succeeded"}], "edges": [], "known": False}
