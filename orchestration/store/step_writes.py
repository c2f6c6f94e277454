"""The step hot path's writes, inside a caller's transaction: a claim, a record.

``Store.claim_step`` and ``Store.record_step`` each run one in a transaction of their
own; ``Store.record_then_claim`` runs a step's record and the claim of the step that
follows it in the same message (a fused chain) in one transaction: one commit fewer per
step, and the same rows as the two transactions would write.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Connection

from orchestration.core.clock import as_utc
from orchestration.core.status import CLAIMABLE_STEP_STATUSES, RunStatus, StepStatus
from orchestration.errors import RunNotFound
from orchestration.store import statements as sql
from orchestration.store.memory import write_memory
from orchestration.store.models import StepRow
from orchestration.store.outcomes import AttemptRecord, Claim, ClaimRequest, RunFinish, StepOutcome

__all__ = ["EndedCosts", "claim_in", "record_in"]

_CLAIMABLE = [status.value for status in CLAIMABLE_STEP_STATUSES]
_NEVER = datetime.max.replace(tzinfo=UTC)  # no heartbeat is this recent: nobody is live


def claim_in(conn: Connection, run_id: str, name: str, request: ClaimRequest,
             now: datetime) -> Claim:
    """Claim a step for a delivery in ``conn``'s transaction (see ``Store.claim_step``)."""
    keys = {"b_run": run_id, "b_name": name}
    claimed = conn.execute(sql.CLAIM_STEP, {
        **keys, "b_worker": request.worker, "b_task": request.task_id, "b_now": now,
        "b_holder": request.holder,
        "b_released": -1 if request.released is None else request.released,
        "b_alive_since": request.alive_since or _NEVER,
    }).first()
    run_status = conn.execute(sql.START_RUN, {"b_run": run_id, "b_now": now}
                              ).scalar() if request.first else None
    if claimed is not None:
        # Latency counts from the first delivery, across broker retries.
        return Claim(True, StepStatus.RUNNING, int(claimed[0]),
                     claimed_at=as_utc(claimed[1]) or now, cost_usd=float(claimed[2]),
                     crashes=int(claimed[3]), delivery=int(claimed[4]))
    row = conn.execute(sql.STEP_STATE, keys).first()
    if run_status is None:
        run_status = conn.execute(sql.RUN_STATUS, {"b_run": run_id}).scalar()
    status = StepStatus(row.status) if row is not None else None
    if run_status == RunStatus.CANCELLED.value and status in CLAIMABLE_STEP_STATUSES:
        # A step re-delivered after its run was cancelled (e.g. its worker died
        # mid-step): it does not run again; it ends cancelled with its run.
        conn.execute(update(StepRow).where(
            StepRow.run_id == run_id, StepRow.name == name,
            StepRow.status.in_(_CLAIMABLE),
        ).values(status=StepStatus.CANCELLED.value, finished_at=now,
                 error="cancelled: its run was cancelled before this delivery"))
        status = StepStatus.CANCELLED
    if row is None or run_status is None or status is None:
        raise RunNotFound(f"run {run_id} has no step {name!r}")
    return Claim(False, status, int(row.attempts), row.output,
                 RunStatus(run_status), error=row.error,
                 held_elsewhere=status is StepStatus.RUNNING)


def record_in(conn: Connection, run_id: str, name: str, outcome: StepOutcome, *,
              worker: str | None, claimed_at: datetime | None, finish: RunFinish | None,
              now: datetime, ended: EndedCosts | None = None) -> bool:
    """Record one step's outcome in ``conn``'s transaction; False if it was terminal.

    ``ended`` keeps the run's total spend when this record ends the run.
    """
    terminal = outcome.status.is_terminal
    last = outcome.attempts[-1] if outcome.attempts else None
    params = {
        "b_gate": last.gate if last else None,
        "b_tokens_in": sum(a.tokens_in for a in outcome.attempts),
        "b_tokens_out": sum(a.tokens_out for a in outcome.attempts),
        "b_run": run_id, "b_name": name, "b_status": outcome.status.value,
        "b_error": outcome.error, "b_error_type": outcome.error_type,
        "b_attempts": len(outcome.attempts) + outcome.extra_attempts,
        "b_cache_hit": outcome.cache_hit,
        "b_cost": outcome.cost_usd,
        "b_model": outcome.model,
        "b_output": outcome.output if terminal else None,
        "b_finished": now if terminal else None,
        "b_latency": (now - claimed_at).total_seconds() * 1000
        if terminal and claimed_at is not None else None,
    }
    if not conn.execute(sql.RECORD_STEP, params).rowcount:
        return False
    if outcome.attempts:
        conn.execute(sql.INSERT_ATTEMPTS, [attempt_row(run_id, name, a, worker)
                                           for a in outcome.attempts])
    if outcome.cost_usd:
        conn.execute(sql.ADD_RUN_COST, {"b_run": run_id, "b_cost": outcome.cost_usd})
    if outcome.memory:
        write_memory(conn, outcome.memory, run_id=run_id, step=name, now=now)
    if finish is not None:
        spent = conn.execute(sql.FINISH_RUN_COST, finish.params(run_id, now)).scalar()
        if spent is not None and ended is not None:
            ended.keep(run_id, float(spent))
    return True


class EndedCosts:
    """The spend of runs this process just ended, each read once (``take``), so the
    ``run_finished`` event needs no read of the run after its record. Bounded: an entry
    nobody takes (the stream is off) is dropped after :data:`KEPT` newer ones."""

    KEPT = 512

    def __init__(self) -> None:
        self._costs: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, run_id: str, cost: float) -> None:
        with self._lock:
            self._costs[run_id] = cost
            while len(self._costs) > self.KEPT:
                self._costs.popitem(last=False)

    def take(self, run_id: str) -> float | None:
        """The spend kept for ``run_id`` (then forgotten), or None."""
        with self._lock:
            return self._costs.pop(run_id, None)


def attempt_row(run_id: str, name: str, attempt: AttemptRecord,
                worker: str | None) -> dict[str, Any]:
    return {
        "run_id": run_id, "step_name": name, "attempt": attempt.attempt,
        "status": attempt.status, "error": attempt.error, "error_type": attempt.error_type,
        "worker": worker, "model": attempt.model, "cost_usd": attempt.cost_usd,
        "latency_ms": attempt.latency_ms, "started_at": attempt.started_at,
        "finished_at": attempt.finished_at, "gate": attempt.gate,
        "tokens_in": attempt.tokens_in, "tokens_out": attempt.tokens_out,
        "breaker": attempt.breaker, "map_index": attempt.map_index, "calls": attempt.calls,
        "error_kind": attempt.error_kind, "policy": attempt.policy,
    }
