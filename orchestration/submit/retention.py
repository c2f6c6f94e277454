"""Retention: finished runs past their policy, and conversation memory over time.

``prune_runs`` deletes runs that ended longer ago than ``ORCH_RETENTION`` (or a
workflow's own ``retention=``), in batches, with everything recorded about them (see
store/pruning.py); the reconciler's passes call it with a bound on the work per pass,
and ``orchestrate db prune`` runs it (``--older-than``, ``--dry-run``).

``forget`` erases everything the results DB holds of one conversation: its turns and
summaries, and the runs that carried it (their inputs, outputs, attempts, waits, map
chunks and events), found by the memory key of each workflow this process knows and by
the run ids on the conversation's turns. ``prune_memory`` deletes, per workflow with a
``Memory(retention=...)``, the turns and summaries written longer ago than that; the
reconciler (the beat's ``orchestration.reconcile``, or the embedded worker's thread)
calls it on every pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from orchestration.core import metrics
from orchestration.core.clock import utcnow
from orchestration.define.workflow import Host
from orchestration.store.memory import Forgotten
from orchestration.store.pruning import Pruned

log = structlog.get_logger("orchestration.submit.retention")


def memory_keys(host: Host) -> dict[str, str]:
    """The memory key input of each workflow this process knows that declares memory."""
    return {name: workflow.memory.key for name, workflow in list(host.workflows.items())
            if workflow.memory is not None}


def forget(host: Host, conversation: str, *, workflow: str | None = None) -> Forgotten:
    """Erase a conversation (of one workflow, or of every one) and the runs that carried it."""
    memory = host.store.memory
    runs = memory.runs_of(conversation, memory_keys(host), workflow)
    forgotten = memory.forget(conversation, runs=runs, workflow=workflow)
    drop_streams(host, runs)
    log.info("conversation forgotten", turns=forgotten.turns, summaries=forgotten.summaries,
             runs=forgotten.runs, events=forgotten.events, workflow=workflow)
    return forgotten


def drop_streams(host: Host, run_ids: list[str]) -> None:
    """Remove deleted runs' live streams (Redis keys; SQL rows go with the runs)."""
    if not run_ids:
        return
    try:
        host.store.run_stream.delete_many(run_ids)
    except Exception as exc:  # the streams expire by their TTL anyway
        log.warning("run streams not deleted; they expire with their TTL",
                    runs=len(run_ids), error=f"{type(exc).__name__}: {exc}")


def prune_memory(host: Host, now: datetime | None = None) -> int:
    """Delete turns and summaries past their workflow's retention; how many rows."""
    now = now or utcnow()
    pruned = 0
    for name, workflow in list(host.workflows.items()):
        retention = workflow.memory.retention if workflow.memory is not None else None
        if retention is not None:
            pruned += host.store.memory.prune(name, now - timedelta(seconds=retention))
    if pruned:
        log.info("memory past its retention deleted", rows=pruned)
    return pruned


@dataclass(frozen=True)
class Cutoff:
    """Runs of ``workflows`` (None: every other workflow) that ended before ``before``."""

    before: datetime
    workflows: frozenset[str] | None
    exclude: frozenset[str] = frozenset()


def cutoffs(host: Host, now: datetime, older_than: float | None = None,
            workflow: str | None = None) -> list[Cutoff]:
    """What the retention policy (or an explicit ``older_than``) deletes now."""
    if older_than is not None:
        return [Cutoff(now - timedelta(seconds=older_than),
                       None if workflow is None else frozenset({workflow}))]
    default = host.settings.retention
    own = {name: wf.retention for name, wf in list(host.workflows.items())
           if wf.retention is not None}
    result = [Cutoff(now - timedelta(seconds=seconds), frozenset({name}))
              for name, seconds in own.items() if math.isfinite(seconds)
              and (workflow is None or workflow == name)]
    if default is not None and (workflow is None or workflow not in own):
        result.append(Cutoff(now - timedelta(seconds=default),
                             None if workflow is None else frozenset({workflow}),
                             exclude=frozenset(own)))
    return result


def prune_runs(host: Host, *, older_than: float | None = None, workflow: str | None = None,
               dry_run: bool = False, max_batches: int | None = None,
               now: datetime | None = None) -> Pruned:
    """Delete finished runs past their retention, in batches; what was (or would be) deleted.

    ``older_than`` (seconds) replaces the policy for this call. ``max_batches`` bounds
    the work of one call (the reconciler's passes); None runs until nothing is left.
    """
    now = now or utcnow()
    pruning = host.store.pruning
    total = Pruned()
    for cutoff in cutoffs(host, now, older_than, workflow):
        if dry_run:
            total.add(pruning.count(cutoff.before, workflows=cutoff.workflows,
                                    exclude=cutoff.exclude))
            continue
        batches = 0
        while max_batches is None or batches < max_batches:
            ids = pruning.candidates(cutoff.before, workflows=cutoff.workflows,
                                     exclude=cutoff.exclude)
            if not ids:
                break
            batch = pruning.delete(ids, cutoff.before)
            drop_streams(host, batch.runs)
            total.add(batch)
            for table, rows in batch.rows.items():
                metrics.PRUNED_ROWS.labels(table=table).inc(rows)
            batches += 1
            if not batch.runs:  # taken by a concurrent prune: it deletes them
                break
    if not dry_run and (older_than is not None or host.settings.retention is not None):
        oldest = min((c.before for c in cutoffs(host, now, older_than, workflow)),
                     default=None)
        if oldest is not None:
            cached = pruning.prune_cache(oldest, now)
            total.rows["step_cache"] = total.rows.get("step_cache", 0) + cached
            metrics.PRUNED_ROWS.labels(table="step_cache").inc(cached)
    if total.runs and not dry_run:
        log.info("runs past their retention deleted", runs=len(total.runs), rows=total.total)
    return total
