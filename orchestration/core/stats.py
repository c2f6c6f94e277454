"""Per-step figures over a set of runs: latency percentiles, retries, fallbacks, failures."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from orchestration.core.status import StepStatus


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class StepStats:
    """Figures for one step of one workflow."""

    step: str
    runs: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    retries: int
    fallbacks: int
    failed: int
    skipped: int
    cost_usd: float


def step_stats(rows: Iterable[tuple[str, str, int, float | None, float]],
               order: Sequence[str] = ()) -> list[StepStats]:
    """Aggregate ``(step, status, attempts, latency_ms, cost_usd)`` rows per step."""
    grouped: dict[str, list[tuple[str, int, float | None, float]]] = {name: [] for name in order}
    for step, status, attempts, latency, cost in rows:
        grouped.setdefault(step, []).append((status, attempts, latency, cost))
    result = []
    for step, items in grouped.items():
        latencies = [latency for status, _, latency, _ in items
                     if latency is not None and status != StepStatus.SKIPPED.value]
        result.append(StepStats(
            step=step, runs=len(items),
            p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95),
            p99_ms=percentile(latencies, 99),
            retries=sum(max(0, attempts - 1) for _, attempts, _, _ in items),
            fallbacks=sum(1 for status, *_ in items if status == StepStatus.FALLBACK.value),
            failed=sum(1 for status, *_ in items if status == StepStatus.FAILED.value),
            skipped=sum(1 for status, *_ in items if status == StepStatus.SKIPPED.value),
            cost_usd=sum(cost for *_, cost in items),
        ))
    return result
