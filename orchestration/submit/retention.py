"""Conversation memory over time: erase a conversation on request, expire old turns.

``forget`` erases everything the results DB holds of one conversation: its turns and
summaries, and the runs that carried it (their inputs, outputs, attempts, waits, map
chunks and events), found by the memory key of each workflow this process knows and by
the run ids on the conversation's turns. ``prune_memory`` deletes, per workflow with a
``Memory(retention=...)``, the turns and summaries written longer ago than that; the
reconciler (the beat's ``orchestration.reconcile``, or the embedded worker's thread)
calls it on every pass.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from orchestration.core.clock import utcnow
from orchestration.define.workflow import Host
from orchestration.store.memory import Forgotten

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
