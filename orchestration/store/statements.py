"""The hot path's statements, built once on the Core tables.

Building an ORM ``update()`` per call costs more Python time than SQLite spends
executing it (~230 µs against ~80 µs per claim); these are built at import with bind
parameters and reused by every step of every run.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    ColumnElement,
    Table,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    select,
    update,
)

from orchestration.core.status import (
    CLAIMABLE_STEP_STATUSES,
    TERMINAL_RUN_STATUSES,
    RunStatus,
    StepStatus,
)
from orchestration.store.models import AttemptRow, RunRow, StepRow, WorkerRow

# Declarative models type __table__ as a FromClause; these are Tables.
runs = cast(Table, RunRow.__table__)
workers = cast(Table, WorkerRow.__table__)
steps = cast(Table, StepRow.__table__)
attempts = cast(Table, AttemptRow.__table__)

CLAIMABLE = sorted(status.value for status in CLAIMABLE_STEP_STATUSES)
TERMINAL_RUN = sorted(status.value for status in TERMINAL_RUN_STATUSES)


def constants(values: list[str]) -> list[ColumnElement[str]]:
    """The status names as SQL literals, written into the statement once.

    ``column.in_(["a", "b"])`` makes an expanding parameter that SQLAlchemy renders into
    the SQL string again on every execution (~11 µs per statement on SQLite); the names
    are the engine's own constants, so they can be part of the cached SQL.
    """
    if not all(value.isidentifier() for value in values):  # only ever the engine's names
        raise ValueError(f"not a status name: {values!r}")
    return [literal_column(f"'{value}'") for value in values]

_this_step = (steps.c.run_id == bindparam("b_run"), steps.c.name == bindparam("b_name"))

# Another message of a step that a live worker is running (a re-dispatch and the broker's
# re-delivery of the same step, say): that delivery must not run it a second time.
_HELD_BY_A_LIVE_WORKER = (
    (steps.c.status == StepStatus.RUNNING.value)
    & (steps.c.celery_task_id != bindparam("b_task"))
    & select(workers.c.id).where(workers.c.id == steps.c.holder,
                                 workers.c.beat_at >= bindparam("b_alive_since")).exists())

# Claim: a step not yet terminal becomes running for this delivery, unless its run was
# cancelled (a re-delivered step of a cancelled run never runs again) or a live worker
# holds it under another message. started_at keeps the first delivery's time, so
# latency spans broker retries.
CLAIM_STEP = (
    update(steps)
    .where(*_this_step, steps.c.status.in_(constants(CLAIMABLE)),
           ~select(runs.c.id).where(runs.c.id == bindparam("b_run"),
                                    runs.c.status == RunStatus.CANCELLED.value).exists(),
           ~_HELD_BY_A_LIVE_WORKER)
    .values(status=StepStatus.RUNNING.value, worker=bindparam("b_worker"),
            holder=bindparam("b_holder"),
            celery_task_id=bindparam("b_task"), deliveries=steps.c.deliveries + 1,
            started_at=func.coalesce(steps.c.started_at, bindparam("b_now")),
            # The same message claimed again while 'running': its previous delivery never
            # recorded anything, i.e. its worker died. Not a crash: a duplicate message (a
            # re-dispatch has another task id; the sweep counts those crashes itself), or
            # the delivery that handed the step back because the results DB was down
            # (it names the delivery it released).
            crashes=steps.c.crashes + case(
                ((steps.c.status == StepStatus.RUNNING.value)
                 & (steps.c.celery_task_id == bindparam("b_task"))
                 & (steps.c.deliveries != bindparam("b_released")), 1), else_=0))
    .returning(steps.c.attempts, steps.c.started_at, steps.c.cost_usd, steps.c.crashes,
               steps.c.deliveries)
)

START_RUN = (
    update(runs)
    .where(runs.c.id == bindparam("b_run"), runs.c.status == RunStatus.PENDING.value)
    .values(status=RunStatus.RUNNING.value, started_at=bindparam("b_now"))
    .returning(runs.c.status)
)

STEP_STATE = select(steps.c.status, steps.c.attempts, steps.c.output, steps.c.error).where(
    *_this_step)
RUN_STATUS = select(runs.c.status).where(runs.c.id == bindparam("b_run"))
# get_run (what every wait returns): built per call, its three selects took ~270 µs of
# SQLAlchemy's Python on SQLite, against ~70 µs prebuilt.
RUN_ROW = select(runs).where(runs.c.id == bindparam("b_run"))
RUN_STEPS = select(steps).where(steps.c.run_id == bindparam("b_run")).order_by(steps.c.id)
# A step's attempt log entries: these columns, by these keys (the step's name last).
ATTEMPT_KEYS = ("attempt", "status", "error", "error_type", "latency_ms", "worker", "model",
                "cost_usd", "started_at", "gate", "tokens_in", "tokens_out", "breaker",
                "map_index", "calls", "error_kind", "policy")
RUN_ATTEMPTS = (select(*(attempts.c[key] for key in ATTEMPT_KEYS), attempts.c.step_name)
                .where(attempts.c.run_id == bindparam("b_run"))
                .order_by(attempts.c.step_name, attempts.c.attempt, attempts.c.id))
RUN_COST = select(runs.c.cost_usd).where(runs.c.id == bindparam("b_run"))

# Outcome: conditional on the step not being terminal yet, so it is recorded once.
RECORD_STEP = (
    update(steps)
    .where(*_this_step, steps.c.status.in_(constants(CLAIMABLE)))
    .values(status=bindparam("b_status"), error=bindparam("b_error"),
            error_type=bindparam("b_error_type"),
            attempts=steps.c.attempts + bindparam("b_attempts"),
            cost_usd=steps.c.cost_usd + bindparam("b_cost"),
            model=func.coalesce(bindparam("b_model"), steps.c.model),
            output=bindparam("b_output", type_=steps.c.output.type),
            finished_at=bindparam("b_finished"), latency_ms=bindparam("b_latency"),
            gate=func.coalesce(bindparam("b_gate"), steps.c.gate),
            tokens_in=steps.c.tokens_in + bindparam("b_tokens_in"),
            tokens_out=steps.c.tokens_out + bindparam("b_tokens_out"),
            cache_hit=bindparam("b_cache_hit"),
            # Recorded: this delivery holds the step no more (the holder index stays the
            # size of what is running now).
            holder=None)
)

INSERT_ATTEMPTS = insert(attempts)

ADD_RUN_COST = (
    update(runs).where(runs.c.id == bindparam("b_run"))
    .values(cost_usd=runs.c.cost_usd + bindparam("b_cost"))
)

FINISH_RUN = (
    update(runs)
    .where(runs.c.id == bindparam("b_run"), runs.c.status.not_in(constants(TERMINAL_RUN)))
    .values(status=bindparam("b_status"), error=bindparam("b_error"),
            error_type=bindparam("b_error_type"), finished_at=bindparam("b_now"))
)
# The same, answering the run's total spend (for its run_finished event: no read after).
FINISH_RUN_COST = FINISH_RUN.returning(runs.c.cost_usd)
