"""Waiting for ``max_parallel`` permits: park a run or a step, wake it when one frees.

A run of a limited workflow takes its permit when it is submitted; without one it is
written ``pending`` and parked (no message is sent), so a tenant's backlog never sits
in a queue ahead of another tenant's runs. A step that cannot take its permit when its
message arrives is parked with that message, and its delivery ends: it holds no worker
slot and nothing polls. Whoever frees a permit wakes the next waiters of its scope
(highest priority first, then oldest); every worker's heartbeat (and the embedded
reconciler) also wakes waiters of scopes whose permits lapsed with a dead holder.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import structlog

from orchestration.core.clock import utcnow
from orchestration.core.status import TERMINAL_RUN_STATUSES
from orchestration.define.workflow import Host, Workflow
from orchestration.errors import RunNotFound
from orchestration.execute.permits import Permits, Renewer, scope
from orchestration.store.permit_waits import PermitWait

log = structlog.get_logger("orchestration.submit.permits")
STALE_WAKE = 60.0  # seconds after which a waiter marked woken, but never sent, waits again


class PermitHost(Host, Protocol):
    """A deployment that keeps permits (the Orchestrator)."""

    @property
    def permits(self) -> Permits:
        """Where permits are kept (Redis shared by the fleet, or this process)."""

    @property
    def renewer(self) -> Renewer:
        """Renews the leases this process's running steps hold."""


def as_permit_host(host: Host) -> PermitHost:
    """The host, typed as one that keeps permits."""
    return cast(PermitHost, host)


def run_scope(workflow: Workflow, inputs: dict[str, Any]) -> str:
    """The scope of a run's workflow permit (its limit must be set)."""
    limit = workflow.limit
    assert limit is not None
    if limit.key is None:
        return scope("wf", workflow.name)
    return scope("wf", workflow.name, inputs.get(limit.key), keyed=True)


def take_permits(host: Host, workflow: Workflow, run_ids: list[str],
                 inputs: dict[str, dict[str, Any]]) -> set[str]:
    """Take each run's permit; the runs that got one (the others are to be parked)."""
    limit = workflow.limit
    if limit is None:
        return set(run_ids)
    permits = as_permit_host(host).permits
    return {run_id for run_id in run_ids
            if permits.take(run_scope(workflow, inputs[run_id]), run_id, limit.max_parallel)}


def park_runs(host: Host, workflow: Workflow, run_ids: list[str],
              inputs: dict[str, dict[str, Any]], priority: int) -> None:
    """Record runs (already written) as waiting for their workflow's permit."""
    limit = workflow.limit
    assert limit is not None
    waits = [PermitWait(0, run_scope(workflow, inputs[run_id]), limit.max_parallel, run_id,
                        None, run_id, None, priority) for run_id in run_ids]
    host.store.permit_waits.park_many(waits, utcnow())
    permits = as_permit_host(host).permits
    for scope_ in {wait.scope for wait in waits}:  # a permit may have freed meanwhile
        permits.waiting(scope_)
        wake(host, scope_, limit.max_parallel)


def park_step(host: Host, wait: PermitWait) -> None:
    """Record a step message waiting for a permit, then wake if one freed meanwhile."""
    host.store.permit_waits.park(wait, utcnow())
    as_permit_host(host).permits.waiting(wait.scope)
    wake(host, wait.scope, wait.max_parallel)


def release(host: Host, scope_: str, holder: str, limit: int) -> None:
    """Give a permit back and wake the next waiters of its scope."""
    as_permit_host(host).permits.release(scope_, holder)
    wake(host, scope_, limit, sure=False)


def wake(host: Host, scope_: str, limit: int, *, sure: bool = True) -> int:
    """Send as many waiters of ``scope_`` as there are free permits; how many were sent.

    Not ``sure`` (a release): the results DB is read only when the scope was marked as
    having waiters lately; the heartbeat's sweep reads it regardless.
    """
    permits = as_permit_host(host).permits
    free = permits.free(scope_, limit, if_waiting=not sure)
    if free <= 0:
        return 0
    store, sent = host.store, 0
    taken = store.permit_waits.take(scope_, free, utcnow())
    if taken:
        permits.waiting(scope_)  # more may wait behind them: releases keep looking
    for index, wait in enumerate(taken):
        if _ended(host, wait.run_id):
            store.permit_waits.done(wait.id)  # ended meanwhile (cancelled): nothing to send
            continue
        if not permits.take(scope_, wait.holder, limit):
            # Another process's waker (or a delivery) took the permit first: every waiter
            # not sent yet waits again, in its place, for the next release.
            store.permit_waits.put_back([w.id for w in taken[index:]])
            break
        try:
            _send(host, wait)
        except Exception:
            permits.release(scope_, wait.holder)
            store.permit_waits.put_back([w.id for w in taken[index:]])
            raise
        store.permit_waits.done(wait.id)
        sent += 1
    return sent


def _ended(host: Host, run_id: str) -> bool:
    try:
        return host.store.run_status(run_id) in TERMINAL_RUN_STATUSES
    except RunNotFound:  # deleted (retention): nothing to send
        return True


def _send(host: Host, wait: PermitWait) -> None:
    if wait.resume is not None:
        host.celery.signature(wait.resume).apply_async()
        return
    name = wait.scope.split(":")[1]  # a run's scope: wf:<workflow>[:<key value>]
    workflow = host.workflows.get(name)
    if workflow is None:
        raise LookupError(f"run {wait.run_id} waits for a permit of workflow {name!r}, which "
                          "is not defined in this process")
    host.dispatch(workflow, wait.run_id, host.store.load_inputs(wait.run_id))


def sweep(host: Host) -> int:
    """Wake waiters whose permits lapsed (a holder died) or were freed unseen."""
    woken = 0
    for scope_, limit in host.store.permit_waits.scopes(utcnow(), STALE_WAKE):
        try:
            woken += wake(host, scope_, limit)
        except Exception as exc:  # one scope's trouble never stops the others
            log.warning("could not wake permit waiters", scope=scope_, error=repr(exc))
    return woken
