"""The run dashboard in a real Chromium: runs list, run page (DAG, timeline), approving a
waiting run and watching it finish live, the workflow page; refused without the token.

Runs are started through the served webhook; each test polls the JSON API with a
deadline until its runs are where it needs them, then looks at the pages.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx

from tests.browser.conftest import IMAGES, TOKEN
from tests.browser.workflows import BROKEN_EVENT, REVIEW_EVENT, TICKET, TICKET_EVENT
from tests.support.polling import wait_until

BEARER = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT_S = 30.0


def start(url: str, event: str, payload: dict[str, Any]) -> str:
    """Start a run through the webhook; its id."""
    answer = httpx.post(f"{url}/events/{event}", json=payload,
                        headers={**BEARER, "X-Event-Id": str(uuid.uuid4())}, timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["outcomes"][0]["run_id"])


def run_json(url: str, run_id: str) -> dict[str, Any]:
    """The run as the JSON API gives it."""
    answer = httpx.get(f"{url}/api/runs/{run_id}", headers=BEARER, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def wait_status(url: str, run_id: str, *statuses: str) -> dict[str, Any]:
    """Poll the API until the run is in one of ``statuses``."""
    return wait_until(lambda: (lambda run: run if run["status"] in statuses else None)(
        run_json(url, run_id)), timeout=TIMEOUT_S, what=f"run {run_id} to be {statuses}",
        interval=0.1)


def node_status(page: Any, step: str) -> str:
    """A DAG node's status as drawn."""
    return str(page.locator(f'svg.dag g.node[data-step="{step}"]').get_attribute(
        "data-status"))


def test_runs_list_then_a_run_page_with_its_dag_and_timeline(server: str, page: Any) -> None:
    ticket = start(server, TICKET_EVENT, {"id": 7, "text": "Cannot login since update v3.2"})
    broken = start(server, BROKEN_EVENT, {"text": "<not json>"})
    wait_status(server, ticket, "succeeded")
    wait_status(server, broken, "failed")

    page.goto(f"{server}/runs")
    assert page.locator(f'#runs tr[data-run="{ticket}"]').get_attribute(
        "data-status") == "succeeded"
    assert page.locator(f'#runs tr[data-run="{broken}"]').get_attribute(
        "data-status") == "failed"
    page.click(f'#runs tr[data-run="{ticket}"] a[href="/runs/{ticket}"]')
    page.wait_for_url(f"{server}/runs/{ticket}")

    nodes = page.locator("svg.dag g.node")
    assert nodes.count() == 4
    assert {step: node_status(page, step) for step in ("classify", "score", "enrich",
                                                       "draft")} == {
        "classify": "succeeded", "score": "succeeded", "enrich": "fallback",
        "draft": "succeeded"}
    assert page.locator("svg.dag path.edge").count() == 3
    rows = page.locator("svg.timeline g.row")
    assert rows.count() == 4
    assert page.locator('svg.timeline rect.attempt[data-step="score"]').count() == 2
    assert page.locator('svg.timeline rect.attempt[data-step="score"]').first.get_attribute(
        "class") == "attempt status-failed"
    page.click("#step-enrich summary")
    assert "no CRM record for ticket 7" in page.inner_text("#step-enrich")
    assert "authenticated (basic as operator)" in page.inner_text("#auth-note")
    page.screenshot(path=str(IMAGES / "dashboard-run.png"), full_page=True)

    page.goto(f"{server}/runs/{broken}")
    assert node_status(page, "parse") == "failed"
    assert node_status(page, "summarise") == "skipped"
    assert "not a JSON document" in page.inner_text("#step-parse")


def test_approving_a_waiting_run_from_its_page_and_seeing_it_finish_live(
        server: str, browser: Any, page: Any) -> None:
    run_id = start(server, REVIEW_EVENT, {"text": "refund approved for order 1842"})
    wait_status(server, run_id, "waiting")
    # A second tab watches the run and is never reloaded: only its stream updates it.
    watcher = page.context.new_page()
    watcher.goto(f"{server}/runs/{run_id}")
    watcher.wait_for_selector("#stream-state:text('live')")
    assert node_status(watcher, "approval") == "waiting"
    assert node_status(watcher, "publish") == "pending"

    page.goto(f"{server}/runs/{run_id}")
    page.fill("#approve-data", '{"approved": true, "by": "browser test"}')
    page.click("#approve")
    page.wait_for_url(f"{server}/runs/{run_id}")

    watcher.wait_for_selector('#live[data-status="succeeded"]')
    watcher.wait_for_selector('svg.dag g.node[data-step="publish"][data-status="succeeded"]')
    assert node_status(watcher, "approval") == "succeeded"
    watcher.wait_for_selector("#events li.type-run_finished")
    # The model's tokens reached this tab through the stream while publish ran.
    streamed = watcher.locator('.tokens.filled[data-step="publish"]')
    assert streamed.count() == 1 and (streamed.text_content() or "").strip()
    watcher.click("#step-publish summary")
    assert "published: Refund approved for order 1842" in watcher.inner_text("#step-publish")
    run = run_json(server, run_id)
    assert run["status"] == "succeeded"
    assert next(s["output"] for s in run["steps"] if s["name"] == "approval")["decision"] == {
        "approved": True, "by": "browser test"}


def test_cancelling_a_waiting_run_from_its_page(server: str, page: Any) -> None:
    run_id = start(server, REVIEW_EVENT, {"text": "not this one"})
    wait_status(server, run_id, "waiting")
    page.goto(f"{server}/runs/{run_id}")
    page.click("#cancel")
    page.wait_for_url(f"{server}/runs/{run_id}")
    page.wait_for_selector('#live[data-status="cancelled"]')
    assert "cancelled" in page.inner_text("#run-status")
    assert page.locator("#approve").count() == 0  # nothing left to approve
    assert run_json(server, run_id)["status"] == "cancelled"


def test_the_workflow_page_shows_its_figures(server: str, page: Any) -> None:
    start(server, TICKET_EVENT, {"id": 8, "text": "Invoice is wrong"})
    run_id = start(server, TICKET_EVENT, {"id": 9, "text": "Password reset loops"})
    wait_status(server, run_id, "succeeded")
    page.goto(f"{server}/workflows/{TICKET}?since=all")
    for step in ("classify", "score", "enrich", "draft"):
        assert page.locator(f'#wf-steps tr[data-step="{step}"]').count() == 1
    enrich = page.locator('#wf-steps tr[data-step="enrich"] td').all_inner_texts()
    assert enrich[5] == "100.0%"  # its fallback answered every run
    assert page.locator("svg.dag g.node").count() == 4
    page.screenshot(path=str(IMAGES / "dashboard-workflow.png"), full_page=True)


def test_a_request_without_the_token_is_refused(server: str, browser: Any) -> None:
    anonymous = browser.new_context()
    try:
        # The browser's own request context: the page answers 401 with a basic challenge.
        response = anonymous.request.get(f"{server}/runs")
        assert response.status == 401
        assert response.headers["www-authenticate"].startswith("Basic")
        assert "unauthorized" in response.text()
        # And requests from a page of the server's origin (health answers anyone).
        tab = anonymous.new_page()
        tab.goto(f"{server}/healthz")
        statuses = tab.evaluate("""async () => Promise.all([
            fetch('/api/runs'),
            fetch('/api/runs', {headers: {Authorization: 'Bearer wrong'}}),
            fetch('/openapi.json'),
        ]).then((answers) => answers.map((a) => a.status))""")
        assert statuses == [401, 401, 401]
        wrong = anonymous.request.get(f"{server}/runs", headers={
            "Authorization": "Basic " + base64.b64encode(b"operator:wrong").decode()})
        assert wrong.status == 401
    finally:
        anonymous.close()
    assert httpx.get(f"{server}/api/runs", timeout=10).status_code == 401
