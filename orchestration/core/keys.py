"""Every Redis key the engine writes, in one place."""

from __future__ import annotations

PREFIX = "orchestration"


def breaker_namespace(model: str) -> str:
    """pybreaker's Redis namespace for one model's breaker (state, counter, opened_at)."""
    return f"{PREFIX}:breaker:{model}"


def breaker_probe(model: str) -> str:
    """Held by the one caller allowed to probe a half-open breaker."""
    return f"{PREFIX}:breaker:{model}:probe"


def rate_window(scope: str, kind: str) -> str:
    """Sliding-window log of one rate limit (``kind``: requests or tokens)."""
    return f"{PREFIX}:rate:{scope}:{kind}"


def latencies(key: str) -> str:
    """Recent latencies (ms) of a step or model, newest first."""
    return f"{PREFIX}:latency:{key}"


def run_done(run_id: str) -> str:
    """Pub/sub channel on which a run's end is announced (the message: its status only)."""
    return f"{PREFIX}:run-done:{run_id}"


def join(join_id: str) -> str:
    """The arrived branches of one parallel group (compile/canvas.py forks): a hash of
    branch index -> that branch's envelope (JSON)."""
    return f"{PREFIX}:join:{join_id}"
