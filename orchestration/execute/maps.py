"""Map steps: run a step once per element of a list, in parallel, output the results in order.

The map step's task replaces itself with a chord: a header of *chunks* (each a message
naming a slice of the list, at most ``DEFAULT_CHUNKS`` chunks unless ``chunk_size=``
says otherwise) and ``orchestration.map_collect`` as the body. A 10,000-element list is
64 messages of ~157 elements, not one giant message nor a 10,000-part chord. Each
element runs under the step's own policies (retries, timeout, fallback); every attempt
is recorded with its element's index. ``critical=False`` puts None in failed slots;
``min_success=`` (a count or a fraction) makes the map a quorum.

The collector's message carries every chunk's return value. A chunk returns its
elements' results in it only while they fit its share of the inline output limit
(``ORCH_INLINE_OUTPUT_LIMIT``, 16 KiB, divided by the number of chunks): a map whose
output fits that limit would travel inline anyway. Bigger results are parked in the
results DB (``map_chunks``) and the chunk returns a summary (counts, first errors,
attempts, cost); the collector reads the parked rows in one query and drops them once
the map step is recorded. Results that redaction would change are never parked (the
results DB never holds secrets, and a stored copy would not be what the step produced):
they stay in the message.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any

from celery import chord
from celery.canvas import Signature

from orchestration.core.envelope import INPUT_SOURCE, OUTPUT_SOURCE, Envelope, dumps
from orchestration.core.redaction import changed_by_redaction
from orchestration.core.status import StepStatus
from orchestration.core.threads import run_bounded
from orchestration.define.step import BoundStep
from orchestration.errors import StepSignal
from orchestration.execute.attempts import (
    Delivery,
    StepCall,
    describe,
    run_attempts,
    run_attempts_async,
)
from orchestration.execute.event_loop import run_on_loop, worker_loop
from orchestration.execute.runtime import arguments
from orchestration.store.repository import AttemptRecord, StepOutcome, Store

MAP_COLLECT_TASK = "orchestration.map_collect"
DEFAULT_CHUNKS = 64
PARKED = "parked"  # in a chunk's summary: its results are in the results DB


def chunk_ranges(total: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """[start, end) of each chunk of a list of ``total`` elements."""
    size = chunk_size or max(1, math.ceil(total / DEFAULT_CHUNKS))
    return [(start, min(total, start + size)) for start in range(0, total, size)]


def map_canvas(step: BoundStep, envelope: Envelope, items: list[Any], *, finalize: bool,
               claimed_at: datetime | None, celery: Any) -> Signature:
    """The chord that replaces a map step's message."""
    spec = step.spec
    # The list travels in the chunks only. Celery copies the chord's callback (the
    # collector) into every chunk message, so the collector's envelope refers to the list
    # (read back from the results DB if a later step needs it) instead of carrying it.
    mapped = step.sources[spec.map or ""]
    lean = Envelope.from_message(envelope.to_message())
    # Unless its stored copy differs (redacted): then only the message has the real list.
    if mapped not in envelope.pinned and (lean.inline.pop(mapped, None) is not None
                                          or mapped not in lean.refs):
        lean.refs[mapped] = INPUT_SOURCE if mapped not in step.requires else OUTPUT_SOURCE
    chunk_message = lean.to_message()
    collect = celery.signature(MAP_COLLECT_TASK, args=(), kwargs={
        "message": chunk_message, "run_id": envelope.run_id, "step": spec.task_name,
        "total": len(items), "finalize": finalize,
        "claimed_at": claimed_at.isoformat() if claimed_at else None,
    }, queue=step.queue)
    if not items:
        return collect.clone(args=([],))
    ranges = chunk_ranges(len(items), spec.chunk_size)
    header = [
        celery.signature(spec.task_name, args=(chunk_message,), kwargs={
            "run_id": envelope.run_id,
            "chunk": {"start": start, "items": items[start:end], "of": len(ranges)},
        }, queue=step.queue)
        for start, end in ranges
    ]
    return chord(header, collect)


def run_chunk(step: BoundStep, message: Any, chunk: dict[str, Any], store: Store,
              delivery: Delivery) -> dict[str, Any]:
    """Run one chunk's elements; record their attempts; return their results for collect.

    Results bigger than the chunk's share of the inline limit are parked in the results
    DB and the collector gets a summary (see the module docstring).
    """

    envelope = Envelope.from_message(message)
    spec = step.spec
    kwargs = arguments(step, envelope, store, without=spec.map)
    results: list[Any] = []
    ok: list[bool] = []
    errors: list[str] = []
    records: list[AttemptRecord] = []
    cost = 0.0

    def element(offset_item: tuple[int, Any]) -> StepOutcome:
        index = chunk["start"] + offset_item[0]
        try:
            return run_attempts(StepCall(step, {**kwargs, spec.map or "": offset_item[1]},
                                         envelope.run_id, store, delivery, map_index=index))
        except StepSignal as signal:  # a child run or a human wait inside a map element
            return _unsupported(signal)

    items = list(enumerate(chunk["items"]))
    if spec.is_async:
        # Every element a task on the worker's event loop: no thread per waiting element.
        outcomes = run_on_loop(partial(_elements_async, step, kwargs, chunk["start"],
                                       chunk["items"], envelope.run_id, store, delivery),
                               delivery.async_threads, delivery.event_loop)
    elif spec.concurrency > 1 and len(items) > 1:
        # I/O-bound elements (model calls) wait together: one message, many calls, on
        # threads the process keeps (with their connections) from one chunk to the next.
        outcomes = run_bounded(element, items, min(spec.concurrency, len(items)),
                               pool="map")
    else:
        outcomes = [element(item) for item in items]
    cancelled = 0  # elements of an async map whose run was cancelled while they ran
    for offset, outcome in enumerate(outcomes):
        index = chunk["start"] + offset
        cancelled += outcome.status is StepStatus.CANCELLED
        succeeded = outcome.status.produced_output
        results.append(outcome.output if succeeded else None)
        ok.append(succeeded)
        if not succeeded:
            lines = (outcome.error or "failed").strip().splitlines()
            errors.append(f"[{index}] {lines[-1] if lines else 'failed'}")
        records.extend(outcome.attempts)
        cost += outcome.cost_usd
    redactor = delivery.redactor
    if redactor is not None:
        records = [record if record.error is None else
                   replace(record, error=redactor.text(record.error)) for record in records]
    store.record_attempts(envelope.run_id, spec.name, records, worker=delivery.worker)
    part = {"start": chunk["start"], "errors": errors[:5], "attempts": len(records),
            "cost": cost, **({"cancelled": cancelled} if cancelled else {})}
    if parks(results, chunk, delivery) and store.map_chunks.put(
            envelope.run_id, spec.name, chunk["start"], results, ok):
        return {**part, "count": len(results), "succeeded": sum(ok), PARKED: True}
    return {**part, "results": results, "ok": ok}


async def _elements_async(step: BoundStep, kwargs: dict[str, Any], start: int,
                          items: list[Any], run_id: str, store: Store,
                          delivery: Delivery) -> list[StepOutcome]:
    """An async map chunk's elements as tasks on the loop, ``concurrency`` at a time."""
    param = step.spec.map or ""
    limit = min(step.spec.concurrency, len(items))
    gate = asyncio.Semaphore(limit) if limit < len(items) else None
    loop = worker_loop(delivery.async_threads)

    async def element(index: int, item: Any) -> StepOutcome:
        loop.element_started()
        call = StepCall(step, {**kwargs, param: item}, run_id, store, delivery,
                        map_index=index)
        try:
            if gate is None:
                return await run_attempts_async(call)
            async with gate:
                return await run_attempts_async(call)
        except StepSignal as signal:  # a child run or a human wait inside a map element
            return _unsupported(signal)

    loop.elements_waiting(len(items))
    try:
        return list(await asyncio.gather(*(element(start + offset, item)
                                           for offset, item in enumerate(items))))
    finally:
        loop.elements_done(len(items))


def _unsupported(signal: StepSignal) -> StepOutcome:
    error, error_type = describe(signal)
    return StepOutcome(StepStatus.FAILED, error=f"not supported in a map: {error}",
                       error_type=error_type)


def parks(results: list[Any], chunk: dict[str, Any], delivery: Delivery) -> bool:
    """True when a chunk's results go to the results DB rather than into its message.

    They must exceed the chunk's share of the inline limit, be storable JSON, and be left
    unchanged by redaction. A chunk message without ``of`` (sent before chunks could park
    their results) keeps them inline, as its collector expects.
    """
    chunks = chunk.get("of")
    if not chunks:
        return False
    try:
        if len(dumps(results).encode()) <= delivery.inline_limit // chunks:
            return False
    except (TypeError, ValueError):  # not storable as JSON: the message's encoder decides
        return False
    redactor = delivery.redactor
    return redactor is None or not changed_by_redaction({"r": results},
                                                        {"r": redactor(results)})


def collect(step: BoundStep, parts: list[dict[str, Any]], total: int, run_id: str,
            store: Store) -> StepOutcome:
    """The map step's outcome from its chunks' return values, parked results read back.

    Parked results are read in one query. Missing ones mean a duplicate delivery of the
    collector (the first recorded the map and dropped them): the recorded outcome is
    returned, which recording leaves as it is. If the map is not recorded, it fails
    rather than report None for elements that succeeded.
    """
    parked = [part["start"] for part in parts if part.get(PARKED)]
    if not parked:
        return collect_outcome(step, parts, total)
    stored = store.map_chunks.load(run_id, step.spec.name, parked)
    whole: list[dict[str, Any]] = []
    missing: list[int] = []
    for part in parts:
        found = stored.get(part["start"]) if part.get(PARKED) else None
        if found is not None and len(found.results) == part["count"]:
            part = {**part, "results": found.results, "ok": found.ok}
        elif part.get(PARKED):
            missing.append(part["start"])
        whole.append(part)
    if not missing:
        return collect_outcome(step, whole, total)
    status, output, error = store.step_state(run_id, step.spec.name)
    if status.is_terminal:
        return StepOutcome(status, output=output, error=error)
    return StepOutcome(StepStatus.FAILED, error_type="MapResultsLost", error=(
        f"map {step.spec.where}: the results of the chunks starting at "
        f"{_listing(missing)} are not in the results DB"))


def drop_parked(step: BoundStep, parts: list[dict[str, Any]], run_id: str,
                store: Store) -> None:
    """Delete a collected map's parked results (after its step was recorded)."""
    if any(part.get(PARKED) for part in parts):
        store.map_chunks.drop(run_id, step.spec.name)


def _listing(starts: Iterable[int]) -> str:
    shown = sorted(starts)
    return ", ".join(map(str, shown[:5])) + (f" (+{len(shown) - 5} more)"
                                               if len(shown) > 5 else "")


def collect_outcome(step: BoundStep, parts: list[dict[str, Any]], total: int) -> StepOutcome:
    """The map step's outcome from its chunks' results (``results`` and ``ok`` in each).

    A chunk's return value counts once, even if two deliveries of it reached the join.
    """
    spec = step.spec
    output: list[Any] = [None] * total
    succeeded = attempts = cancelled = 0
    cost = 0.0
    errors: list[str] = []
    by_start = {part["start"]: part for part in parts}
    for start in sorted(by_start):
        part = by_start[start]
        output[start:start + len(part["results"])] = part["results"]
        succeeded += sum(part["ok"])
        attempts += part["attempts"]
        cost += part["cost"]
        errors.extend(part["errors"])
        cancelled += part.get("cancelled", 0)
    if cancelled:  # its run was cancelled: the step ends as the run's other steps do
        return StepOutcome(StepStatus.CANCELLED, error_type="CancelledError", error=(
            f"cancelled: its run was cancelled while the map ran ({cancelled} of {total} "
            "elements cancelled in flight)"), cost_usd=cost, extra_attempts=attempts)
    failed = total - succeeded
    summary = (f"{failed} of {total} elements failed (first: {'; '.join(errors[:3])})"
               if failed else None)
    required = spec.required_successes(total)
    if failed == 0 or (spec.min_success is not None and succeeded >= required) or (
            spec.min_success is None and not spec.critical):
        status = StepStatus.SUCCEEDED
    else:
        status = StepStatus.FAILED
        if spec.min_success is not None:
            summary = f"quorum not met: {succeeded} of {total} succeeded, {required} needed; " \
                      f"{summary}"
    return StepOutcome(status, output=output, error=summary,
                       error_type="MapElementsFailed" if failed else None,
                       cost_usd=cost, extra_attempts=attempts)
