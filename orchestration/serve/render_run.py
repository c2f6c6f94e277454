"""HTML of the run page: summary, actions, the DAG, the timeline, every step's details.

The part that changes while the run goes on is the ``#live`` element; the page's script
fetches it again (``GET /runs/{id}/live``) when the run's event stream says something
happened, so one renderer serves the first view and every update.
"""

from __future__ import annotations

from html import escape
from typing import Any

from orchestration.serve.render import DASH, badge, e, ms, pretty, u, usd, when
from orchestration.serve.svg import dag_svg, timeline_svg

RESUMABLE = ("failed", "cancelled")
OPENED = ("failed", "waiting")  # a step's details shown unfolded: what needs a look


def run_body(view: dict[str, Any], csrf: str) -> str:
    """The whole run page body."""
    run_id = view["run_id"]
    return (f'<h1>Run <code>{e(run_id)}</code></h1>'
            f'<div id="live" data-run="{e(run_id)}" data-status="{e(view["status"])}" '
            f'data-terminal="{str(view["terminal"]).lower()}" '
            f'data-fragment="/runs/{e(run_id)}/live" data-events="/runs/{e(run_id)}/events">'
            f'{live_fragment(view, csrf)}</div>'
            '<section><h2>Live events</h2><p class="hint" id="stream-state">'
            'connecting…</p><ul class="events" id="events"></ul></section>')


def live_fragment(view: dict[str, Any], csrf: str) -> str:
    """What changes while the run goes on (the inner HTML of ``#live``)."""
    return (_summary(view) + _actions(view, csrf)
            + f'<section><h2>Graph</h2><div class="dag-box" id="dag">{dag_svg(view["graph"])}'
            + _legend() + "</div></section>"
            + '<section><h2>Timeline</h2><div class="timeline-box" id="timeline">'
            + f'{timeline_svg(view)}</div></section>'
            + '<section><h2>Steps</h2><div id="steps">'
            + "".join(_step(step) for step in view["steps"]) + "</div></section>"
            + f'<section><h2>Inputs</h2>{pretty(view["inputs"])}</section>')


def _summary(view: dict[str, Any]) -> str:
    parent = (f'<dt>parent run</dt><dd><a href="/runs/{u(view["parent_run_id"])}">'
              f'{e(view["parent_run_id"])}</a></dd>' if view.get("parent_run_id") else "")
    error = (f'<dt>error</dt><dd class="err" id="run-error">{e(view["error"])}</dd>'
             if view.get("error") else "")
    took = DASH if view["duration_s"] is None else f'{view["duration_s"]:.3f} s'
    return ('<dl class="figures">'
            f'<dt>workflow</dt><dd><a href="/workflows/{u(view["workflow"])}">'
            f'{e(view["workflow"])}</a></dd>'
            f'<dt>status</dt><dd id="run-status">{badge(view["status"])}</dd>'
            f'<dt>created</dt><dd>{when(view["created_at"])}</dd>'
            f'<dt>finished</dt><dd>{when(view["finished_at"])}</dd>'
            f'<dt>took</dt><dd>{took}</dd>'
            f'<dt>cost</dt><dd id="run-cost">{usd(view["cost_usd"])}</dd>'
            f'<dt>tokens</dt><dd>{view["tokens_in"]} in / {view["tokens_out"]} out</dd>'
            f"{parent}{error}</dl>")


def _actions(view: dict[str, Any], csrf: str) -> str:
    run_id, status = view["run_id"], view["status"]
    hidden = f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
    forms = []
    if view["waiting"]:
        steps = ", ".join(view["waiting"])
        forms.append(
            f'<form class="action" id="approve-form" method="post" '
            f'action="/runs/{e(run_id)}/approve">{hidden}'
            f'<p>Waiting for a person at <b>{e(steps)}</b>. The data (JSON) becomes what '
            '<code>ctx.wait_for_input</code> returns.</p>'
            '<textarea name="data" id="approve-data" rows="3" cols="50">'
            '{"approved": true}</textarea>'
            '<label>input name <input name="name" id="approve-name" size="14" '
            'placeholder="(any)"></label>'
            '<button type="submit" id="approve">approve</button></form>')
    if not view["terminal"]:
        forms.append(f'<form class="action" method="post" action="/runs/{e(run_id)}/cancel">'
                     f'{hidden}<button type="submit" id="cancel" class="danger">cancel run'
                     "</button></form>")
    if status in RESUMABLE:
        forms.append(f'<form class="action" method="post" action="/runs/{e(run_id)}/resume">'
                     f'{hidden}<label>inputs to give again (JSON, optional) '
                     '<input name="inputs" id="resume-inputs" size="30"></label>'
                     '<button type="submit" id="resume">resume</button></form>')
    return f'<div class="actions" id="actions">{"".join(forms)}</div>' if forms else ""


def _legend() -> str:
    states = ("pending", "running", "retrying", "waiting", "succeeded", "fallback", "failed",
              "skipped", "cancelled")
    return '<p class="legend">' + " ".join(badge(state) for state in states) + "</p>"


def _step(step: dict[str, Any]) -> str:
    name = step["name"]
    facts = [("model", e(step["model"])), ("queue", e(step["queue"])),
             ("worker", e(step["worker"])), ("attempts", e(step["attempts"])),
             ("latency", ms(step["latency_ms"])), ("cost", usd(step["cost_usd"])),
             ("tokens", f'{step["tokens_in"]} in / {step["tokens_out"]} out'),
             ("started", when(step["started_at"])), ("finished", when(step["finished_at"]))]
    if step.get("gate"):
        facts.append(("gate verdict", f'<span class="gate">{e(step["gate"])}</span>'))
    if step.get("cache_hit"):
        facts.append(("cache", "hit"))
    if step.get("crashes"):
        facts.append(("worker crashes", e(step["crashes"])))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    opened = " open" if step["status"] in OPENED else ""
    parts = [f'<details class="step" id="step-{e(name)}" data-step="{e(name)}" '
             f'data-status="{e(step["status"])}"{opened}><summary>{badge(step["status"])} '
             f'<b>{e(name)}</b> <span class="hint">{e(step["model"] or "")} '
             f'{usd(step["cost_usd"]) if step["cost_usd"] else ""}</span></summary>'
             f'<dl class="facts">{dl}</dl>']
    if step.get("inputs") is not None:
        parts.append(f'<h4>inputs</h4>{pretty(step["inputs"])}')
    if step["status"] in ("succeeded", "fallback") or step.get("output") is not None:
        label = f'output <code>{e(step["output_name"])}</code>' if step["output_name"] \
            else "output"
        parts.append(f'<h4>{label}</h4>{pretty(step["output"])}')
    if step.get("error"):
        parts.append(f'<h4>error {e(step["error_type"] or "")}</h4>'
                     f'<pre class="err">{e(step["error"])}</pre>')
    parts.append(f'<div class="tokens" data-step="{e(name)}"></div>')
    if step["attempt_log"]:
        parts.append(_attempts(step["attempt_log"]))
    parts.append("</details>")
    return "".join(parts)


def _attempts(log: list[dict[str, Any]]) -> str:
    rows = []
    for attempt in log:
        calls = attempt.get("calls") or []
        models = ", ".join(f'{c.get("model")}{"" if c.get("ok") else " ✗"}' for c in calls
                           if isinstance(c, dict))
        error = str(attempt.get("error") or "").strip().splitlines()
        rows.append(f'<tr data-attempt="{e(attempt.get("attempt"))}">'
                    f'<td>{e(attempt.get("attempt"))}</td><td>{badge(attempt.get("status"))}'
                    f'</td><td>{when(attempt.get("started_at"))}</td>'
                    f'<td class="num">{ms(attempt.get("latency_ms"))}</td>'
                    f'<td>{e(attempt.get("model"))}</td><td>{e(models)}</td>'
                    f'<td class="num">{e(attempt.get("tokens_in"))}/'
                    f'{e(attempt.get("tokens_out"))}</td>'
                    f'<td class="num">{usd(attempt.get("cost_usd"))}</td>'
                    f'<td>{e(attempt.get("gate") or "")}</td>'
                    f'<td>{e(attempt.get("policy") or "")}</td>'
                    f'<td class="err">{e(error[-1][:200] if error else "")}</td></tr>')
    return ('<table class="attempts"><thead><tr><th>#</th><th>status</th><th>started</th>'
            '<th>latency</th><th>model</th><th>calls</th><th>tokens</th><th>cost</th>'
            '<th>gate</th><th>policy</th><th>error</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')
