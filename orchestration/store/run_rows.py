"""A new run's rows in as few round trips as the database allows.

On PostgreSQL a submit's run row and its step rows are one statement, executed in
autocommit: a data-modifying CTE inserts the run and the steps' ``INSERT ... SELECT``
reads the step list from one JSON parameter (``jsonb_to_recordset``). One round trip
instead of four (BEGIN, the run, the steps, COMMIT); a single statement is atomic by
itself. SQLite has no network round trip to save: its rows stay a two-insert transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import (
    Boolean,
    Engine,
    String,
    bindparam,
    column,
    func,
    insert,
    literal,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

from orchestration.core.status import StepStatus
from orchestration.store import statements as sql

__all__ = ["insert_run"]

_STEP_COLUMNS = ["run_id", "name", "output_name", "status", "queue", "model", "critical",
                 "attempts", "deliveries", "cost_usd"]


class Planned(Protocol):
    """A step row to create (``repository.PlannedStep``)."""

    @property
    def name(self) -> str: ...
    @property
    def output_name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def critical(self) -> bool: ...


def _statement() -> Any:
    """Built once (building it per call cost more Python than the round trip it saves)."""
    run_cte = insert(sql.runs).values(
        {name: bindparam(f"b_{name}") for name in _RUN_COLUMNS},
    ).returning(sql.runs.c.id).cte("new_run")
    planned = func.jsonb_to_recordset(bindparam("b_steps", type_=JSONB)).table_valued(
        column("name", String), column("output_name", String), column("queue", String),
        column("model", String), column("critical", Boolean),
    ).render_derived(name="planned", with_types=True)
    rows = select(run_cte.c.id, planned.c.name, planned.c.output_name,
                  literal(StepStatus.PENDING.value), planned.c.queue, planned.c.model,
                  planned.c.critical, literal(0), literal(0), literal(0.0)
                  ).select_from(run_cte.join(planned, true()))
    return insert(sql.steps).from_select(_STEP_COLUMNS, rows, include_defaults=False)


_RUN_COLUMNS = ["id", "workflow", "workflow_version", "status", "inputs", "idempotency_key",
                "parent_run_id", "cost_usd", "created_at", "redacted_inputs", "priority"]
INSERT_RUN_AND_STEPS = _statement()


def insert_run(engine: Engine, row: dict[str, Any], steps: Sequence[Planned]) -> None:
    """Write a run row and its pending step rows, atomically.

    Raises SQLAlchemy's ``IntegrityError`` on a duplicate idempotency key, as a
    transaction would.
    """
    if engine.dialect.name == "postgresql" and steps:
        params = {f"b_{name}": row.get(name) for name in _RUN_COLUMNS}
        params["b_steps"] = [{"name": step.name, "output_name": step.output_name,
                              "queue": step.queue, "model": step.model,
                              "critical": step.critical} for step in steps]
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(INSERT_RUN_AND_STEPS, params)
        return
    with engine.begin() as conn:
        conn.execute(insert(sql.runs), [row])
        if steps:
            conn.execute(insert(sql.steps), [{
                "run_id": row["id"], "name": step.name, "output_name": step.output_name,
                "status": StepStatus.PENDING.value, "queue": step.queue, "model": step.model,
                "critical": step.critical, "attempts": 0, "deliveries": 0, "cost_usd": 0.0,
            } for step in steps])
