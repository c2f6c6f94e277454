"""Human input: deliver a person's answer to a waiting run, expire waits past their deadline.

A step that called ``ctx.wait_for_input`` is parked with the message that resumes it;
either way (delivered or expired) that message is sent again and the step runs anew.
"""

from __future__ import annotations

from typing import Any

from orchestration.core.clock import utcnow
from orchestration.define.workflow import Host
from orchestration.store.waits import DELIVERED, EXPIRED


def approve(host: Host, run_id: str, data: Any, name: str | None = None) -> int:
    """Deliver a person's input to a waiting run; its step runs again on a worker."""
    waits = host.store.waits.resolve(run_id, data=data, name=name, status=DELIVERED,
                                     now=utcnow())
    for wait in waits:
        host.celery.signature(wait.resume).apply_async()
    return len(waits)


def expire_due_waits(host: Host) -> int:
    """Expire waits past their deadline; their steps run again and apply their fallback."""
    expired = 0
    for run_id, name in host.store.waits.due(utcnow()):
        try:
            waits = host.store.waits.resolve(run_id, data=None, name=name,
                                             status=EXPIRED, now=utcnow())
        except Exception:  # delivered in the meantime
            continue
        for wait in waits:
            host.celery.signature(wait.resume).apply_async()
            expired += 1
    return expired
