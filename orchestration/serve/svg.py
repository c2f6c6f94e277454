"""Inline SVG drawn here, with no library: a workflow's DAG and a run's timeline (Gantt).

The DAG is laid out in layers (a step one column right of its deepest dependency), the
steps of a column ordered by the mean position of their dependencies (two sweeps, which
removes most crossings of real workflows), edges as curves. Each node carries its status
as a class (colours are in ``static/dashboard.css``) and as ``data-status``; the timeline
draws one row per step with a bar per attempt. Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 172, 46, 56, 16, 12
LABEL_W, ROW_H, CHART_W, AXIS_H = 170, 22, 720, 22


def _layers(names: Sequence[str], edges: Sequence[Sequence[str]]) -> dict[str, int]:
    ups: dict[str, list[str]] = {name: [] for name in names}
    for up, down in edges:
        if up in ups and down in ups:
            ups[down].append(up)
    layer: dict[str, int] = {}

    def depth(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in layer:
            parents = [p for p in ups[name] if p not in seen]
            layer[name] = 1 + max((depth(p, seen | {name}) for p in parents), default=-1)
        return layer[name]

    for name in names:
        depth(name)
    return layer


def layout(names: Sequence[str], edges: Sequence[Sequence[str]]
           ) -> dict[str, tuple[float, float]]:
    """Top-left corner of each node's box."""
    layer = _layers(names, edges)
    columns: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for name in names:  # declaration order first
        columns[layer[name]].append(name)
    ups: dict[str, list[str]] = {name: [] for name in names}
    downs: dict[str, list[str]] = {name: [] for name in names}
    for up, down in edges:
        if up in ups and down in ups:
            ups[down].append(up)
            downs[up].append(down)
    for neighbours, order in ((ups, columns[1:]), (downs, columns[-2::-1]),
                              (ups, columns[1:])):
        for column in order:
            rank = {name: i for col in columns for i, name in enumerate(col)}
            column.sort(key=lambda n: (_mean([rank[m] for m in neighbours[n]], rank[n]),
                                       rank[n]))
    tallest = max((len(column) for column in columns), default=0)
    spots: dict[str, tuple[float, float]] = {}
    for index, column in enumerate(columns):
        offset = (tallest - len(column)) * (NODE_H + GAP_Y) / 2
        for row, name in enumerate(column):
            spots[name] = (PAD + index * (NODE_W + GAP_X),
                           PAD + offset + row * (NODE_H + GAP_Y))
    return spots


def _mean(values: Sequence[int], default: int) -> float:
    return sum(values) / len(values) if values else float(default)


def dag_svg(graph: dict[str, Any]) -> str:
    """The DAG of a graph view (``nodes`` with name/status/queue/kind, ``edges``)."""
    nodes = graph["nodes"]
    if not nodes:
        return '<p class="empty">no steps recorded</p>'
    names = [node["name"] for node in nodes]
    spots = layout(names, graph["edges"])
    width = max(x for x, _ in spots.values()) + NODE_W + PAD
    height = max(y for _, y in spots.values()) + NODE_H + PAD
    parts = [f'<svg class="dag" role="img" aria-label="workflow graph" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
             f'height="{height:.0f}" xmlns="http://www.w3.org/2000/svg">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
             'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
             '<path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>']
    for up, down in graph["edges"]:
        if up in spots and down in spots:
            (x1, y1), (x2, y2) = spots[up], spots[down]
            sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H / 2, x2 - 2, y2 + NODE_H / 2
            mid = (sx + ex) / 2
            parts.append(f'<path class="edge" data-from="{escape(up)}" '
                         f'data-to="{escape(down)}" marker-end="url(#arrow)" '
                         f'd="M{sx:.1f},{sy:.1f} C{mid:.1f},{sy:.1f} {mid:.1f},{ey:.1f} '
                         f'{ex:.1f},{ey:.1f}"/>')
    for node in nodes:
        parts.append(_node(node, *spots[node["name"]]))
    parts.append("</svg>")
    return "".join(parts)


def _node(node: dict[str, Any], x: float, y: float) -> str:
    name, status = str(node["name"]), str(node.get("status") or "declared")
    kind = str(node.get("kind") or "step")
    sub = status if status != "declared" else (node.get("queue") or "")
    if kind != "step":
        sub = f"{sub} · {kind}"
    title = f"{name}: {status} (queue {node.get('queue') or '-'}, {kind})"
    return (f'<a href="#step-{escape(name)}" class="node-link">'
            f'<g class="node status-{escape(status)} kind-{escape(kind)}" '
            f'data-step="{escape(name)}" data-status="{escape(status)}">'
            f'<title>{escape(title)}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="7"/>'
            f'<text x="{x + 10:.1f}" y="{y + 19:.1f}" class="name">'
            f'{escape(_clip(name, 22))}</text>'
            f'<text x="{x + 10:.1f}" y="{y + 36:.1f}" class="sub">'
            f'{escape(_clip(str(sub), 28))}</text></g></a>')


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[:size - 1] + "…"


def timeline_svg(run: dict[str, Any], *, now: datetime | None = None) -> str:
    """A Gantt of a run view: one row per step, a bar per attempt (or the step's span)."""
    moment = now or datetime.now(UTC)
    origin = _time(run.get("created_at")) or moment
    rows = [step for step in run["steps"] if step.get("started_at")]
    if not rows:
        return '<p class="empty">no step has started yet</p>'
    ends = [_end(step, moment) for step in rows]
    end = _time(run.get("finished_at")) or max(ends)
    total = max((end - origin).total_seconds(), 1e-3)
    scale = CHART_W / total
    height = AXIS_H + ROW_H * len(rows) + 4
    width = LABEL_W + CHART_W + 60
    parts = [f'<svg class="timeline" role="img" aria-label="timeline" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             'xmlns="http://www.w3.org/2000/svg">']
    for tick in range(5):
        x = LABEL_W + CHART_W * tick / 4
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" '
                     f'y2="{height}"/><text class="axis" x="{x:.1f}" y="{AXIS_H - 8}">'
                     f'{escape(_duration(total * tick / 4))}</text>')
    for index, (step, finish) in enumerate(zip(rows, ends, strict=True)):
        y = AXIS_H + index * ROW_H
        name, status = str(step["name"]), str(step["status"])
        start = _time(step["started_at"]) or origin
        parts.append(f'<g class="row" data-step="{escape(name)}" '
                     f'data-status="{escape(status)}">'
                     f'<text class="label" x="4" y="{y + 15}">{escape(_clip(name, 24))}</text>'
                     f'<rect class="span status-{escape(status)}" '
                     f'x="{LABEL_W + (start - origin).total_seconds() * scale:.1f}" '
                     f'y="{y + 3}" width="{max((finish - start).total_seconds() * scale, 1):.1f}"'
                     f' height="{ROW_H - 6}"><title>{escape(_span_title(step, start, finish))}'
                     '</title></rect>')
        for attempt in step.get("attempt_log") or ():
            parts.append(_attempt(attempt, name, origin, scale, y))
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _attempt(attempt: dict[str, Any], step: str, origin: datetime, scale: float,
             y: float) -> str:
    started = _time(attempt.get("started_at"))
    if started is None:
        return ""
    latency = float(attempt.get("latency_ms") or 0.0)
    status = str(attempt.get("status") or "")
    title = f"attempt {attempt.get('attempt')}: {status}, {latency:.1f} ms"
    if attempt.get("model"):
        title += f", model {attempt['model']}"
    if attempt.get("error"):
        title += f"\n{str(attempt['error']).strip().splitlines()[-1][:200]}"
    return (f'<rect class="attempt status-{escape(status)}" data-step="{escape(step)}" '
            f'data-attempt="{escape(str(attempt.get("attempt")))}" '
            f'x="{LABEL_W + (started - origin).total_seconds() * scale:.1f}" y="{y + 6}" '
            f'width="{max(latency / 1000 * scale, 2):.1f}" height="{ROW_H - 12}">'
            f'<title>{escape(title)}</title></rect>')


def _span_title(step: dict[str, Any], start: datetime, finish: datetime) -> str:
    took = (finish - start).total_seconds()
    return (f"{step['name']}: {step['status']}, {_duration(took)}, "
            f"{step.get('attempts') or 0} attempt(s)")


def _end(step: dict[str, Any], now: datetime) -> datetime:
    finished = _time(step.get("finished_at"))
    if finished is not None:
        return finished
    started = _time(step.get("started_at")) or now
    if step.get("latency_ms") is not None and step["status"] not in ("running", "waiting",
                                                                       "retrying"):
        return started + _ms(float(step["latency_ms"]))
    return max(now, started)


def _ms(value: float) -> timedelta:
    return timedelta(milliseconds=value)


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"
