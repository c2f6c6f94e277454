"""HTML of the dashboard's pages (the run page is in :mod:`.render_run`).

Plain server-rendered HTML: every value is escaped here, no inline script or style (the
Content-Security-Policy forbids them), one stylesheet and one script from ``/static``.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from orchestration.core.status import RunStatus
from orchestration.serve.svg import dag_svg

DASH = "&#8211;"  # what an absent value shows
NAV = (("/runs", "Runs"), ("/workflows", "Workflows"), ("/models", "Models & breakers"),
       ("/queues", "Queues"), ("/openapi.json", "API"))


def e(value: Any) -> str:
    """Escaped text of any value (None as a dash)."""
    return DASH if value is None else escape(str(value))


def u(value: Any) -> str:
    """A path segment: percent-encoded, then escaped for the attribute."""
    return escape(quote(str(value), safe=""))


def when(value: Any) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC), with the full value as a tooltip."""
    if not value:
        return DASH
    try:
        shown = datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        shown = str(value)
    return f'<time datetime="{e(value)}">{e(shown)}</time>'


def usd(value: Any) -> str:
    """A cost in USD."""
    return DASH if value is None else f"${float(value):.6f}"


def ms(value: Any) -> str:
    """Milliseconds."""
    return DASH if value is None else f"{float(value):.1f} ms"


def pct(value: Any) -> str:
    """A rate as a percentage."""
    return DASH if value is None else f"{100 * float(value):.1f}%"


def pretty(value: Any, limit: int = 20_000) -> str:
    """A JSON value, indented and escaped (cut at ``limit`` characters)."""
    text = json.dumps(value, indent=2, default=str, ensure_ascii=False)
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit} more characters)"
    return f"<pre class=\"json\">{escape(text)}</pre>"


def badge(status: Any) -> str:
    """A status as a coloured label."""
    return f'<span class="badge status-{e(status)}">{e(status)}</span>'


def page(title: str, body: str, *, auth_note: str, active: str = "") -> str:
    """The document around a page's body: header with navigation and the auth state."""
    links = "".join(f'<a href="{href}"{_active(href == active)}>{label}</a>'
                    for href, label in NAV)
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(title)} · orchestrate</title>"
            "<link rel=\"stylesheet\" href=\"/static/dashboard.css\">"
            "<script src=\"/static/dashboard.js\" defer></script></head><body>"
            f"<header><span class=\"brand\">orchestrate</span><nav>{links}</nav>"
            f"{auth_note}</header><main>{body}</main></body></html>")


def auth_note(scheme: str, user: str | None) -> str:
    """What the header says about access: an open dashboard is said loudly."""
    if scheme == "open":
        return ('<span class="auth open" id="auth-note">no ORCH_SERVE_TOKEN configured: '
                'anyone on this machine can use this dashboard (loopback only)</span>')
    who = f" as {e(user)}" if user else ""
    return f'<span class="auth" id="auth-note">authenticated ({e(scheme)}{who})</span>'


def error_body(status: int, message: str, back: str | None = None) -> str:
    """An error's page body."""
    link = f'<p><a href="{e(back)}">back</a></p>' if back else ""
    return f'<h1>{status}</h1><p class="error" id="error">{e(message)}</p>{link}'


def runs_body(view: dict[str, Any]) -> str:
    """The runs list: filters, a table, pages."""
    filters = view["filters"]
    options = "".join(f'<option{" selected" if w == filters["workflow"] else ""}>{e(w)}'
                      "</option>" for w in view["workflows"])
    statuses = "".join(f'<option{" selected" if s.value == filters["status"] else ""}>'
                       f"{e(s.value)}</option>" for s in RunStatus)
    form = ('<form class="filters" method="get" action="/runs">'
            f'<label>workflow <select name="workflow"><option value="">any</option>{options}'
            '</select></label>'
            f'<label>status <select name="status"><option value="">any</option>{statuses}'
            '</select></label>'
            f'<label>since <input name="since" value="{e(filters["since"])}" size="12" '
            'placeholder="24h, 7d or ISO"></label>'
            f'<label>until <input name="until" value="{e(filters["until"])}" size="12" '
            'placeholder="ISO time"></label><button type="submit">filter</button></form>')
    rows = "".join(
        f'<tr data-run="{e(run["run_id"])}" data-status="{e(run["status"])}">'
        f'<td><a href="/runs/{u(run["run_id"])}">{e(run["run_id"])}</a></td>'
        f'<td><a href="/workflows/{u(run["workflow"])}">{e(run["workflow"])}</a></td>'
        f'<td>{badge(run["status"])}</td><td>{when(run["created_at"])}</td>'
        f'<td class="num">{_seconds(run["duration_s"])}</td>'
        f'<td class="num">{usd(run["cost_usd"])}</td>'
        f'<td class="err">{e(_first_line(run["error"]))}</td></tr>' for run in view["runs"])
    table = ('<table class="runs" id="runs"><thead><tr><th>run</th><th>workflow</th>'
             '<th>status</th><th>created (UTC)</th><th>took</th><th>cost</th><th>error</th>'
             f'</tr></thead><tbody>{rows}</tbody></table>' if view["runs"]
             else '<p class="empty" id="runs">no runs match</p>')
    return f"<h1>Runs</h1>{form}{table}{_pager(view)}"


def _pager(view: dict[str, Any]) -> str:
    base = {key: value for key, value in view["filters"].items() if value}
    links = []
    if view["page"] > 1:
        query = urlencode({**base, "page": view["page"] - 1})
        links.append(f'<a rel="prev" href="/runs?{e(query)}">newer</a>')
    links.append(f'<span>page {view["page"]}</span>')
    if view["has_next"]:
        query = urlencode({**base, "page": view["page"] + 1})
        links.append(f'<a rel="next" href="/runs?{e(query)}">older</a>')
    return f'<nav class="pager">{" ".join(links)}</nav>'


def workflows_body(names: list[str]) -> str:
    """Every workflow known here or seen in the results DB."""
    items = "".join(f'<li><a href="/workflows/{u(name)}">{e(name)}</a> · '
                    f'<a href="/runs?{e(urlencode({"workflow": name}))}">runs</a></li>'
                    for name in names)
    return f'<h1>Workflows</h1><ul class="workflows">{items or "<li>none yet</li>"}</ul>'


def workflow_body(view: dict[str, Any]) -> str:
    """p50/p95 per step, error rate per model, cost per run, fallback rate; the graph."""
    name = view["workflow"]
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(view["runs_by_status"].items()))
    windows = " ".join(f'<a href="/workflows/{u(name)}?since={w}"'
                       f'{_active(w == view["since"])}>{w}</a>'
                       for w in ("1h", "24h", "7d", "30d", "all"))
    summary = (f'<dl class="figures"><dt>runs</dt><dd id="wf-runs">{view["runs"]}'
               f' <small>{e(by_status)}</small></dd>'
               f'<dt>cost per run</dt><dd id="wf-cost">{usd(view["cost_per_run"])}</dd>'
               f'<dt>fallback rate</dt><dd id="wf-fallback">{pct(view["fallback_rate"])}</dd>'
               "</dl>")
    steps = "".join(
        f'<tr data-step="{e(s["step"])}"><td>{e(s["step"])}</td><td class="num">{s["runs"]}</td>'
        f'<td class="num">{ms(s["p50_ms"])}</td><td class="num">{ms(s["p95_ms"])}</td>'
        f'<td class="num">{s["retries"]}</td><td class="num">{pct(s["fallback_rate"])}</td>'
        f'<td class="num">{s["failed"]}</td><td class="num">{s["skipped"]}</td>'
        f'<td class="num">{usd(s["cost_usd"])}</td></tr>' for s in view["steps"])
    models = "".join(
        f'<tr data-model="{e(m["model"])}"><td>{e(m["model"])}</td>'
        f'<td class="num">{m["attempts"]}</td><td class="num">{m["failed"]}</td>'
        f'<td class="num">{pct(m["error_rate"])}</td></tr>' for m in view["models"])
    return (f'<h1>Workflow {e(name)}</h1><p class="windows">window: {windows} · '
            f'<a href="/runs?{e(urlencode({"workflow": name}))}">its runs</a></p>{summary}'
            f'<section><h2>Graph</h2><div class="dag-box">{dag_svg(view["graph"])}</div>'
            '</section><section><h2>Steps</h2><table id="wf-steps"><thead><tr><th>step</th>'
            '<th>runs</th><th>p50</th><th>p95</th><th>retries</th><th>fallback</th>'
            '<th>failed</th><th>skipped</th><th>cost</th></tr></thead>'
            f'<tbody>{steps}</tbody></table></section>'
            '<section><h2>Models</h2><table id="wf-models"><thead><tr><th>model</th>'
            '<th>calls</th><th>failed</th><th>error rate</th></tr></thead>'
            f'<tbody>{models or "<tr><td colspan=4>no model calls</td></tr>"}</tbody>'
            "</table></section>")


def models_body(view: dict[str, Any]) -> str:
    """Breakers per model: state, failures counted, opened at, recent failed calls."""
    where = ("shared by every worker (Redis)" if view["shared"] else
             "this process's own (no shared Redis: workers elsewhere keep their own)")
    rows = []
    for m in view["models"]:
        failures = "".join(
            f'<li>{when(f["at"])} <a href="/runs/{u(f["run_id"])}">{e(f["step"])}</a> '
            f'{e(f["error_kind"] or "")} <span class="err">{e(_first_line(f["error"]))}'
            "</span></li>" for f in m["recent_failures"])
        problem = f'<div class="err">{e(m["problem"])}</div>' if m.get("problem") else ""
        rows.append(f'<tr data-model="{e(m["model"])}" data-state="{e(m["state"])}">'
                    f'<td>{e(m["model"])}</td><td>{badge(m["state"])}{problem}</td>'
                    f'<td class="num">{e(m["failures"])}</td><td>{when(m["opened_at"])}</td>'
                    f'<td><ul class="failures">{failures or "<li>none</li>"}</ul></td></tr>')
    minutes = view["recent_window_s"] / 60
    return ('<h1>Models &amp; breakers</h1>'
            f'<p>Breaker state is {e(where)}. Failed calls of the last {minutes:.0f} min.</p>'
            '<table id="breakers"><thead><tr><th>model</th><th>breaker</th>'
            '<th>failures counted</th><th>opened at</th><th>recent failed calls</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def queues_body(view: dict[str, Any]) -> str:
    """Messages waiting per queue."""
    rows = "".join(f'<tr data-queue="{e(q["queue"])}"><td>{e(q["queue"])}</td>'
                   f'<td class="num">{e(q["waiting"])}</td></tr>' for q in view["queues"])
    problem = f'<p class="error">{e(view["problem"])}</p>' if view.get("problem") else ""
    return (f'<h1>Queues</h1>{problem}<table id="queues"><thead><tr><th>queue</th>'
            f'<th>waiting</th></tr></thead><tbody>{rows}</tbody></table>')


def _active(yes: bool) -> str:
    return ' class="active"' if yes else ""


def _seconds(value: Any) -> str:
    return DASH if value is None else f"{float(value):.2f} s"


def _first_line(text: Any) -> str:
    if not text:
        return ""
    lines = str(text).strip().splitlines()
    return (lines[-1] if lines else str(text))[:160]
