"""Throughput options: fleet-wide limits (``max_parallel``, ``concurrency_key``) and
batching across runs (``batch_size``, ``batch_wait``), checked where they are declared.

``max_parallel=N`` on a workflow bounds the runs executing at once; on a step, the
executions of that step at once; both count every worker process on every host.
``concurrency_key`` names a workflow input (or, on a step, one of its parameters) whose
value partitions the limit: ``max_parallel=4, concurrency_key="tenant_id"`` allows four
per tenant, so one tenant's backlog never takes another's permits.

``batch_size=N`` collects up to N elements of the step from different runs (waiting at
most ``batch_wait`` seconds for a batch to fill) and calls the function once with lists.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from orchestration.core.names import identifier
from orchestration.errors import WorkflowDefinitionError

DEFAULT_BATCH_WAIT: Final = 0.5  # seconds a partly filled batch waits for more elements
MAX_BATCH_SIZE: Final = 10_000
MAX_BATCH_WAIT: Final = 3600.0


@dataclass(frozen=True)
class Limit:
    """At most ``max_parallel`` at once, per value of ``key`` (None: one limit for all)."""

    max_parallel: int
    key: str | None = None


def _whole(value: Any, option: str, where: str, *, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (
            maximum is not None and value > maximum):
        top = f" and <= {maximum}" if maximum is not None else ""
        raise WorkflowDefinitionError(f"{where}: {option} must be a whole number >= 1{top}, "
                                      f"got {value!r}")
    return value


def as_limit(max_parallel: Any, concurrency_key: Any, where: str) -> Limit | None:
    """The limit ``max_parallel``/``concurrency_key`` declare (None: no limit)."""
    if max_parallel is None:
        if concurrency_key is not None:
            raise WorkflowDefinitionError(
                f"{where}: concurrency_key={concurrency_key!r} partitions a max_parallel "
                "limit, and max_parallel is not set (e.g. max_parallel=4, "
                f"concurrency_key={concurrency_key!r}: four at once per value)")
        return None
    limit = _whole(max_parallel, "max_parallel", where)
    if concurrency_key is None:
        return Limit(limit)
    if not isinstance(concurrency_key, str):
        raise WorkflowDefinitionError(f"{where}: concurrency_key must name an input or "
                                      f"parameter, got {concurrency_key!r}")
    return Limit(limit, identifier(concurrency_key, "concurrency_key", where))


def step_limit(options: Mapping[str, Any], where: str) -> Limit | None:
    """A step's ``max_parallel``/``concurrency_key`` (a map step's elements use concurrency=)."""
    limit = as_limit(options.get("max_parallel"), options.get("concurrency_key"), where)
    if limit is not None and options.get("map") is not None:
        raise WorkflowDefinitionError(
            f"{where}: max_parallel applies to a step's executions, and a map step's "
            "elements run in chunks: bound them with concurrency= (elements at once per "
            "chunk) and chunk_size=, or put max_parallel on the workflow")
    return limit


def check_step_key(limit: Limit | None, params: Collection[str], inputs: Collection[str],
                   where: str) -> None:
    """A step's ``concurrency_key`` names one of its parameters or a workflow input."""
    if limit is None or limit.key is None or limit.key in params or limit.key in inputs:
        return
    raise WorkflowDefinitionError(
        f"{where}: concurrency_key={limit.key!r} is neither a parameter of the step nor an "
        f"input of the workflow; parameters: {', '.join(params) or 'none'}")


def batch_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``batch_size``/``batch_wait`` as StepSpec fields (empty: not batched)."""
    size, wait = options.get("batch_size"), options.get("batch_wait")
    if size is None:
        if wait is not None:
            raise WorkflowDefinitionError(
                f"{where}: batch_wait={wait!r} is how long a batch waits to fill, and "
                "batch_size is not set (e.g. batch_size=10, batch_wait=0.5)")
        return {}
    size = _whole(size, "batch_size", where, maximum=MAX_BATCH_SIZE)
    if wait is None:
        wait = DEFAULT_BATCH_WAIT
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not math.isfinite(wait) \
            or not 0 <= wait <= MAX_BATCH_WAIT:
        raise WorkflowDefinitionError(f"{where}: batch_wait must be seconds in [0, "
                                      f"{MAX_BATCH_WAIT:g}], got {wait!r}")
    for other in ("map", "cache"):
        if options.get(other) not in (None, False):
            raise WorkflowDefinitionError(
                f"{where}: batch_size and {other}= cannot be combined (batch_size collects "
                "one element per run from many runs; a map step runs one run's list)")
    return {"batch_size": size, "batch_wait": float(wait)}
