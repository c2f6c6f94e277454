"""Tables of the results database.

``runs`` is one row per workflow run, ``steps`` one row per step of a run (created with
the run, so the whole plan is visible before anything executes), ``step_attempts`` one
row per attempt (the trace).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")
# A Python None stored as SQL NULL, not JSON ``null``: read back with no JSON decode.
# (Rows written before hold ``null``, which reads back as None all the same.)
NullableJSON = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    """Declarative base of the results database."""


class RunRow(Base):
    """One workflow run: its state machine, inputs and outcome."""

    __tablename__ = "runs"
    # A workflow's runs in time order (runs -w, stats, the dashboard); serves (workflow) too.
    __table_args__ = (Index("ix_runs_workflow_created_at", "workflow", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(200))
    workflow_version: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # Inputs whose stored copy redaction changed: a re-dispatch must be given them again.
    redacted_inputs: Mapped[list[str] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    parent_run_id: Mapped[str | None] = mapped_column(String(36), index=True)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Indexed for retention: the runs that ended longest ago, in order, batch by batch.
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, index=True)
    # 0 (normal) .. 9 (most urgent): a re-dispatch sends the run at it again.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class StepRow(Base):
    """One step of one run: its current state and (once done) its output."""

    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("run_id", "name", name="uq_steps_run_name"),
        # Only steps held now (a record clears the holder): the sweep's index stays small.
        Index("ix_steps_holder", "holder", postgresql_where=text("holder IS NOT NULL"),
              sqlite_where=text("holder IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    output_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    critical: Mapped[bool] = mapped_column(Boolean, default=True)
    output: Mapped[Any | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    queue: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(200))
    # The worker process instance (a row of `workers`) whose delivery holds the step while
    # it is running: a holder that stops beating has died, and the sweep recovers the step.
    holder: Mapped[str | None] = mapped_column(String(32))
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tokens_out: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    gate: Mapped[str | None] = mapped_column(Text)
    crashes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    latency_ms: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)


class CacheRow(Base):
    """A step output computed before, by key (workflow, step, code, inputs)."""

    __tablename__ = "step_cache"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(200))
    step: Mapped[str] = mapped_column(String(200))
    output: Mapped[Any | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)


class WaitRow(Base):
    """A run parked for a person's input: what to deliver, and how to continue."""

    __tablename__ = "waits"
    __table_args__ = (UniqueConstraint("run_id", "step_name", "name", name="uq_waits"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step_name: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)  # waiting/delivered/expired
    data: Mapped[Any | None] = mapped_column(JSONType)
    deadline: Mapped[datetime | None] = mapped_column(Timestamp, index=True)
    resume: Mapped[Any] = mapped_column(JSONType)  # the step's Celery signature, re-sent
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp)


class AttemptRow(Base):
    """One attempt of one step: the trace an operator reads at 2 AM."""

    __tablename__ = "step_attempts"
    __table_args__ = (Index("ix_step_attempts_run_step", "run_id", "step_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step_name: Mapped[str] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tokens_out: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    gate: Mapped[str | None] = mapped_column(Text)
    breaker: Mapped[str | None] = mapped_column(String(400))
    map_index: Mapped[int | None] = mapped_column(Integer)
    # Which kind of error failed the attempt (timeout, model_unavailable, ...) and the
    # step's on_error policy that acted on it, e.g. "model_unavailable: route_to_fallback".
    error_kind: Mapped[str | None] = mapped_column(String(32))
    policy: Mapped[str | None] = mapped_column(String(200))
    # Every model call of the attempt; most attempts of a map element make none (NULL).
    calls: Mapped[Any | None] = mapped_column(NullableJSON)
    latency_ms: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(Timestamp)
    finished_at: Mapped[datetime] = mapped_column(Timestamp)


class WorkerRow(Base):
    """One worker process instance and its heartbeat (its death is a stale beat)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # instance id
    name: Mapped[str] = mapped_column(String(200))  # Celery node name
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[Any] = mapped_column(JSONType)  # the queues it consumes
    # The workflow versions it carries: {workflow: [version, ...]} (store/versions.py).
    workflows: Mapped[Any | None] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(Timestamp)
    beat_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(Timestamp)
    swept_at: Mapped[datetime | None] = mapped_column(Timestamp)


class MapChunkRow(Base):
    """The results of one chunk of a map step, until the map's collector reads them."""

    __tablename__ = "map_chunks"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    step: Mapped[str] = mapped_column(String(200), primary_key=True)
    start: Mapped[int] = mapped_column(Integer, primary_key=True)
    results: Mapped[Any] = mapped_column(JSONType)
    ok: Mapped[Any] = mapped_column(JSONType)


class EventRow(Base):
    """One event received (emit, webhook, stream, schedule) and what became of it.

    ``outcome`` is ``started`` (``run_id`` names the run), ``duplicate`` (its dedupe key
    already started ``run_id``), ``unmatched`` (no trigger listens), ``rejected``
    (``reason`` says which path of the payload failed), ``skipped`` or ``queued`` (a
    schedule's overlap policy; a queued tick's row becomes ``started`` when its run
    starts). An event matching several triggers has one row per trigger.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(32))  # emit / webhook / stream / schedule
    payload: Mapped[Any | None] = mapped_column(JSONType)  # redacted
    received_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str | None] = mapped_column(String(200))
    run_id: Mapped[str | None] = mapped_column(String(36), index=True)
    reason: Mapped[str | None] = mapped_column(Text)


class MemoryTurnRow(Base):
    """One message of a conversation kept by a workflow's memory (content redacted).

    ``seq`` numbers the conversation's turns (1, 2, ...), allocated when the step that
    appended them records its outcome; ``run_id``/``step`` say which step wrote it.
    """

    __tablename__ = "memory_turns"
    __table_args__ = (
        UniqueConstraint("workflow", "conversation", "seq", name="uq_memory_turns_seq"),
        Index("ix_memory_turns_created", "workflow", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow: Mapped[str] = mapped_column(String(200))
    conversation: Mapped[str] = mapped_column(String(200), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(32))
    content: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str | None] = mapped_column(String(36))
    step: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class MemorySummaryRow(Base):
    """A summary of a conversation's turns up to ``upto_seq`` (the older ones, incrementally)."""

    __tablename__ = "memory_summaries"
    __table_args__ = (
        UniqueConstraint("workflow", "conversation", "upto_seq",
                         name="uq_memory_summaries_upto"),
        Index("ix_memory_summaries_created", "workflow", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow: Mapped[str] = mapped_column(String(200))
    conversation: Mapped[str] = mapped_column(String(200), index=True)
    upto_seq: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class PermitWaitRow(Base):
    """A run (or one of its steps) waiting for a ``max_parallel`` permit, in no queue.

    ``resume`` is the step's message to send again when it gets its permit; None for a
    run that has not started (its canvas is built from the run row). ``woken_at`` is set
    while a waker sends it; a row woken long ago whose waker died is woken again.
    """

    __tablename__ = "permit_waits"
    __table_args__ = (Index("ix_permit_waits_next", "scope", "woken_at", "priority", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(300))
    max_parallel: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_name: Mapped[str | None] = mapped_column(String(200))
    holder: Mapped[str] = mapped_column(String(300))
    resume: Mapped[Any | None] = mapped_column(JSONType)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    woken_at: Mapped[datetime | None] = mapped_column(Timestamp)


class BatchElementRow(Base):
    """One run's element of a batched step (``batch_size=``), buffered until its batch runs.

    ``waiting``: buffered; ``taken``: in the batch ``batch_id`` that ``holder`` runs until
    ``lease_until`` (a dead holder's or an expired lease's batch is taken again);
    ``done``: the step is recorded and ``resume`` (the run's parked message) is being sent.
    """

    __tablename__ = "batch_elements"
    __table_args__ = (
        UniqueConstraint("run_id", "step_name", name="uq_batch_elements_run_step"),
        Index("ix_batch_elements_next", "step", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    step: Mapped[str] = mapped_column(String(300))  # the task name, <workflow>.<step>
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONType)
    resume: Mapped[dict[str, Any]] = mapped_column(JSONType)
    prior_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    claimed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    batch_id: Mapped[str | None] = mapped_column(String(32))
    holder: Mapped[str | None] = mapped_column(String(300))
    taken_at: Mapped[datetime | None] = mapped_column(Timestamp)
    lease_until: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class RunEventRow(Base):
    """One event of a run's live stream on the embedded default (store/run_stream.py).

    ``body`` is the event as JSON text; ``once`` is set (to the type) for an event written
    at most once per run (``run_finished``): the unique constraint keeps it single.
    """

    __tablename__ = "run_events"
    __table_args__ = (
        UniqueConstraint("run_id", "once", name="uq_run_events_once"),
        Index("ix_run_events_run_id_id", "run_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    once: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


class VersionWaitRow(Base):
    """A step message of a run whose workflow version the worker that got it does not carry.

    Parked here instead of run with another version's code (store/versions.py): a worker
    carrying ``version`` sends ``message`` on to a queue of that version; past the grace
    period (ORCH_VERSION_GRACE) with no such worker, the run is failed saying so.
    """

    __tablename__ = "version_waits"
    __table_args__ = (Index("ix_version_waits_version", "workflow", "version", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    workflow: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(32))
    step_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(300))  # the step's queue
    message: Mapped[Any] = mapped_column(JSONType)  # the signature to send again
    parked_by: Mapped[str] = mapped_column(String(300))  # the worker and its version
    created_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
