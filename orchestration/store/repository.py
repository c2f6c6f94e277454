"""The repository: every read and write of run state goes through :class:`Store`.

Writes are conditional updates on the row's current status, so each transition is
recorded once even when a message is delivered twice; the hot path (claim a step,
record its outcome) is one transaction each.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from orchestration.core.clock import utcnow
from orchestration.core.completion import Completions, LocalCompletions
from orchestration.core.status import (
    CLAIMABLE_STEP_STATUSES,
    TERMINAL_RUN_STATUSES,
    RunStatus,
    StepStatus,
)
from orchestration.errors import RunNotFound, SchemaNotCurrent
from orchestration.store import statements as sql
from orchestration.store.bulk import insert_rows
from orchestration.store.engine import (
    create_engines,
    retry_disconnect,
    schema_is_current,
    upgrade,
)
from orchestration.store.events import Events
from orchestration.store.group_commit import GroupCommit
from orchestration.store.map_chunks import MapChunks
from orchestration.store.memory import MemoryStore
from orchestration.store.models import PermitWaitRow, RunRow, StepRow, WaitRow
from orchestration.store.outcomes import (
    AttemptRecord,
    Claim,
    ClaimRequest,
    RunFinish,
    StepOutcome,
)
from orchestration.store.permit_waits import PermitWaits
from orchestration.store.pruning import Pruning
from orchestration.store.reads import StoreReads
from orchestration.store.recovery import Recovery
from orchestration.store.run_rows import insert_run
from orchestration.store.run_stream import RunStream, SQLRunStream
from orchestration.store.step_writes import EndedCosts, attempt_row, claim_in, record_in
from orchestration.store.waits import CANCELLED as CANCELLED_WAIT
from orchestration.store.waits import WAITING, Waits
from orchestration.store.workers import Workers

__all__ = ["AttemptRecord", "Claim", "ClaimRequest", "PlannedStep", "RunFinish", "StepOutcome",
           "Store"]

_CLAIMABLE = [status.value for status in CLAIMABLE_STEP_STATUSES]
_TERMINAL_RUN = [status.value for status in TERMINAL_RUN_STATUSES]


@dataclass(frozen=True)
class PlannedStep:
    """A step row to create with its run."""

    name: str
    output_name: str
    queue: str
    model: str | None
    critical: bool


class Store(StoreReads):
    """Reads and writes runs, steps and attempts in the results database."""

    def __init__(self, url: str, *, migrate: bool = True, group_commit: int = 32) -> None:
        self.url = url
        self._ended = EndedCosts()  # runs this process just ended: their spend
        self._writer, self._reader = create_engines(url)
        # Claims and records of this process's threads share commits (store/group_commit.py).
        self.group = GroupCommit(self._writer, group_commit)
        # Runs' live event streams: this DB's run_events, unless the Orchestrator sets a
        # Redis one (store/run_stream.py); RunHandle.stream reads through it.
        self.run_stream: RunStream = SQLRunStream(self._writer, self._reader)
        # Told, after the commit, of every run this store ends: wakes RunHandle.wait.
        # This process only, unless the Orchestrator sets a live or a Redis one.
        self.completions: Completions = LocalCompletions()
        self._migrate = migrate
        self._schema_checked = False
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The writer engine (for migrations and tests)."""
        return self._writer

    @property
    def reader(self) -> Engine:
        """The reader engine (the writer, except with SQLite)."""
        return self._reader

    @property
    def events(self) -> Events:
        """Events received and what became of them."""
        return Events(self._writer, self._reader)

    @property
    def map_chunks(self) -> MapChunks:
        """Map chunk results parked until the map's collector reads them."""
        return MapChunks(self._writer, self._reader)

    @property
    def memory(self) -> MemoryStore:
        """Conversation memory: turns, summaries, erasure, retention."""
        return MemoryStore(self._writer, self._reader)

    @property
    def pruning(self) -> Pruning:
        """Retention: finished runs and their rows, deleted in batches."""
        return Pruning(self._writer, self._reader)

    @property
    def permit_waits(self) -> PermitWaits:
        """Runs and steps waiting for a max_parallel permit."""
        return PermitWaits(self._writer, self._reader)

    @property
    def waits(self) -> Waits:
        """Human waits of this store."""
        return Waits(self._writer, self._reader)

    @property
    def workers(self) -> Workers:
        """Worker heartbeats, and the steps held by workers that died."""
        return Workers(self._writer, self._reader)

    @property
    def recovery(self) -> Recovery:
        """The step cache, resume and stale-run queries of this store."""
        return Recovery(self._writer, self._reader)

    def ensure_schema(self) -> None:
        """Create or upgrade the schema if needed; cheap after the first call."""
        if self._schema_checked:
            return
        with self._lock:
            if self._schema_checked:
                return
            if not schema_is_current(self._reader):
                if not self._migrate:
                    raise SchemaNotCurrent(
                        "the results database schema is not current: run `orchestrate db upgrade`"
                    )
                upgrade(self._writer)
            self._schema_checked = True

    def dispose(self) -> None:
        """Close pooled connections (at shutdown)."""
        self._writer.dispose()
        if self._reader is not self._writer:
            self._reader.dispose()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's pooled connections without closing them."""
        self._writer.dispose(close=False)
        if self._reader is not self._writer:
            self._reader.dispose(close=False)
        self.group.after_fork()

    # -- writes ------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        workflow: str,
        version: str,
        inputs: dict[str, Any],
        steps: Sequence[PlannedStep],
        *,
        idempotency_key: str | None = None,
        parent_run_id: str | None = None,
        redacted: Sequence[str] = (),
        priority: int = 0,
    ) -> str:
        """Write the run row and its pending step rows; returns the run id.

        With an ``idempotency_key`` already used, nothing is written and the existing
        run's id is returned. ``redacted``: inputs whose stored copy redaction changed.
        """
        self.ensure_schema()
        row = {"id": run_id, "workflow": workflow, "workflow_version": version,
               "status": RunStatus.PENDING.value, "inputs": inputs,
               "idempotency_key": idempotency_key, "parent_run_id": parent_run_id,
               "cost_usd": 0.0, "created_at": utcnow(), "redacted_inputs": list(redacted),
               "priority": priority}
        try:
            retry_disconnect(lambda: insert_run(self._writer, row, steps))
        except IntegrityError:
            if self.run_exists(run_id):  # written before a disconnect hid the commit
                return run_id
            existing = self.find_by_idempotency_key(idempotency_key) \
                if idempotency_key is not None else None
            if existing is None:
                raise
            return existing
        return run_id

    def create_runs(self, workflow: str, version: str,
                    runs: Sequence[tuple[str, dict[str, Any]]],
                    steps: Sequence[PlannedStep],
                    redacted: Mapping[str, Sequence[str]] | None = None,
                    priority: int = 0) -> None:
        """Write many runs of one workflow (and their step rows) in one transaction.

        ``redacted``: by run id, inputs whose stored copy redaction changed.
        """
        self.ensure_schema()
        now = utcnow()
        changed = redacted or {}
        with self._writer.begin() as conn:  # COPY on PostgreSQL (store/bulk.py)
            insert_rows(conn, sql.runs, [{
                "id": run_id, "workflow": workflow, "workflow_version": version,
                "status": RunStatus.PENDING.value, "inputs": inputs, "cost_usd": 0.0,
                "created_at": now, "redacted_inputs": list(changed.get(run_id, ())),
                "priority": priority}
                for run_id, inputs in runs])
            insert_rows(conn, sql.steps, [{
                "run_id": run_id, "name": step.name, "output_name": step.output_name,
                "status": StepStatus.PENDING.value, "queue": step.queue, "model": step.model,
                "critical": step.critical, "attempts": 0, "deliveries": 0, "cost_usd": 0.0,
            } for run_id, _ in runs for step in steps])

    def claim_step(
        self, run_id: str, name: str, *, worker: str | None, task_id: str | None,
        first: bool = True, holder: str | None = None, released: int | None = None,
        alive_since: datetime | None = None,
    ) -> Claim:
        """Mark a step running for this delivery, unless it already finished.

        ``first`` (a step with no upstream step in this delivery path) also moves the run
        from ``pending`` to ``running``; later steps skip that write. ``holder`` is the
        worker process instance that runs it (its heartbeat tells whether it is alive);
        ``released`` is the delivery number this message handed back on purpose (the
        results DB was down), which is therefore not counted as a crash. A step that a
        worker which beat since ``alive_since`` holds under another message is not
        claimed (``Claim.held_elsewhere``); without ``alive_since`` no holder counts as live.
        """
        request = ClaimRequest(worker, task_id, first, holder, released, alive_since)
        return self.group.run(lambda conn: claim_in(conn, run_id, name, request, utcnow()),
                              run_id)

    def record_step(self, run_id: str, name: str, outcome: StepOutcome,
                    *, worker: str | None = None, claimed_at: datetime | None = None,
                    finish: RunFinish | None = None, notify: bool = True) -> bool:
        """Record a step's outcome and its attempts; False if it was already terminal.

        ``claimed_at`` (from the claim) gives the step's latency in the same write;
        ``finish`` (the run's last step) ends the run in the same transaction, and so
        does ``outcome.memory`` (the turns the step appended to its conversation).
        A run it ends gets its completion notice after the commit, unless ``notify`` is
        False: the caller sends it (after the run's stream is closed).
        """
        now = utcnow()
        recorded = self.group.run(lambda conn: record_in(
            conn, run_id, name, outcome, worker=worker, claimed_at=claimed_at, finish=finish,
            now=now, ended=self._ended), run_id, shared=not outcome.memory)
        if recorded and finish is not None and notify:
            self.completions.notify(run_id, finish.status.value)
        return recorded

    def ended_cost(self, run_id: str) -> float:
        """The spend of a run ``record_step`` just ended here (no read), else as stored."""
        kept = self._ended.take(run_id)
        return self.run_cost(run_id) if kept is None else kept

    def record_then_claim(self, run_id: str, name: str, outcome: StepOutcome, *,
                          worker: str | None, claimed_at: datetime | None,
                          then: str, request: ClaimRequest) -> Claim | None:
        """Record a step's outcome and claim the step ``then`` in one transaction.

        For the next step of the same message (a fused chain): what ``record_step`` and
        ``claim_step`` write, with one commit. None when the step was already terminal
        (nothing is written, nothing claimed: the caller goes on as after a False
        ``record_step``).
        """
        now = utcnow()

        def work(conn: Connection) -> Claim | None:
            if not record_in(conn, run_id, name, outcome, worker=worker,
                             claimed_at=claimed_at, finish=None, now=now):
                return None
            return claim_in(conn, run_id, then, request, now)

        # Conversation turns lock rows of another key than the run: never in a batch.
        return self.group.run(work, run_id, shared=not outcome.memory)

    def record_steps(self, records: Sequence[tuple[str, str, StepOutcome, datetime | None]],
                     *, worker: str | None = None) -> list[bool]:
        """Record several runs' steps (run id, step, outcome, claimed at) in one transaction,
        as :meth:`record_step` does each (a batched step's runs); False where a step was
        already terminal."""
        now = utcnow()
        with self._writer.begin() as conn:
            return [record_in(conn, run_id, name, outcome, worker=worker, claimed_at=claimed_at,
                            finish=None, now=now)
                    for run_id, name, outcome, claimed_at in records]

    def record_attempts(self, run_id: str, name: str, attempts: list[AttemptRecord],
                        *, worker: str | None = None) -> None:
        """Record attempts without changing the step (map elements, in one transaction)."""
        if attempts:
            with self._writer.begin() as conn:
                conn.execute(sql.INSERT_ATTEMPTS, [attempt_row(run_id, name, a, worker)
                                                   for a in attempts])

    def skip_steps(self, run_id: str, names: Iterable[str], reason: str) -> int:
        """Mark steps skipped (a dependency failed); returns how many changed."""
        names = list(names)
        if not names:
            return 0
        with self._writer.begin() as conn:
            result = conn.execute(
                update(StepRow)
                .where(StepRow.run_id == run_id, StepRow.name.in_(names),
                       StepRow.status.in_(_CLAIMABLE))
                .values(status=StepStatus.SKIPPED.value, error=reason, finished_at=utcnow())
            )
        return int(result.rowcount or 0)

    def cancel_run(self, run_id: str, reason: str = "cancelled") -> list[str]:
        """Cancel a run: it ends ``cancelled`` and its steps not yet finished never start.

        A step already running finishes its attempt, but no step after it is claimed.
        Returns the run's unfinished child runs (to cancel in turn).
        """
        now = utcnow()
        with self._writer.begin() as conn:
            found = conn.execute(select(RunRow.status).where(RunRow.id == run_id)).scalar()
            if found is None:
                raise RunNotFound(f"no run {run_id!r}")
            # Step rows before the run row: the order a claim and a record take them
            # (step, then run), so a cancel and a step starting at once cannot deadlock.
            conn.execute(update(StepRow).where(
                StepRow.run_id == run_id,
                StepRow.status.in_([StepStatus.PENDING.value, StepStatus.RETRYING.value,
                                    StepStatus.WAITING.value])
            ).values(status=StepStatus.CANCELLED.value, error=reason, finished_at=now))
            conn.execute(sql.FINISH_RUN, RunFinish(RunStatus.CANCELLED, reason,
                                                   "Cancelled").params(run_id, now))
            conn.execute(update(WaitRow).where(WaitRow.run_id == run_id,
                                               WaitRow.status == WAITING)
                         .values(status=CANCELLED_WAIT, resolved_at=now))
            conn.execute(delete(PermitWaitRow).where(PermitWaitRow.run_id == run_id))
            children = conn.execute(select(RunRow.id).where(
                RunRow.parent_run_id == run_id, RunRow.status.not_in(_TERMINAL_RUN))).all()
        self.completions.notify(run_id, RunStatus.CANCELLED.value)
        return [row.id for row in children]

    def finish_run(self, run_id: str, status: RunStatus, *, error: str | None = None,
                   error_type: str | None = None, notify: bool = True) -> bool:
        """Move a run to a terminal status; False if it was already terminal. The
        completion notice follows the commit, unless ``notify`` is False (the caller's)."""
        finish = RunFinish(status, error, error_type)
        with self._writer.begin() as conn:
            result = conn.execute(sql.FINISH_RUN, finish.params(run_id, utcnow()))
        if result.rowcount and notify:
            self.completions.notify(run_id, status.value)
        return bool(result.rowcount)
