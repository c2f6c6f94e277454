"""Conversation memory in the results DB: turns, their summaries, erasure and retention.

A step's appends are written by :func:`write_memory` inside the transaction that
records the step's outcome (``Store.record_step``), so they exist exactly when that
outcome does: a failed or retried attempt leaves none, and a duplicate delivery, whose
record finds the step already terminal, writes none again.

Turns are numbered per conversation (``seq`` 1, 2, ...) when they are written: the
next number is read and the rows inserted under a savepoint, and the unique
``(workflow, conversation, seq)`` index turns a concurrent writer's number into a
conflict that is retried with a fresh read (PostgreSQL); SQLite writes one transaction
at a time (``BEGIN IMMEDIATE``). No turn is lost or numbered twice, and the turns of
one append stay adjacent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Text, cast, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from orchestration.core.clock import as_utc
from orchestration.store.models import (
    AttemptRow,
    EventRow,
    MapChunkRow,
    MemorySummaryRow,
    MemoryTurnRow,
    RunRow,
    StepRow,
    WaitRow,
)

SEQ_RETRIES = 50  # concurrent writers to one conversation, each costs one retry at most


@dataclass(frozen=True)
class Turn:
    """One stored message of a conversation."""

    seq: int
    role: str
    content: str
    tokens: int
    run_id: str | None = None
    step: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Summary:
    """A summary of a conversation's turns up to ``upto_seq``."""

    upto_seq: int
    content: str
    tokens: int
    run_id: str | None = None
    created_at: datetime | None = None


@dataclass
class MemoryWrite:
    """What one step wrote to its conversation, recorded with its outcome.

    ``turns``: (role, content already redacted, tokens) in order; ``summary``: a new
    summary of the turns up to its ``upto_seq`` (made while the step ran).
    """

    workflow: str
    conversation: str
    turns: list[tuple[str, str, int]] = field(default_factory=list)
    summary: Summary | None = None

    def __bool__(self) -> bool:
        return bool(self.turns) or self.summary is not None


@dataclass(frozen=True)
class Forgotten:
    """What ``forget`` erased."""

    turns: int
    summaries: int
    runs: int
    events: int


def write_memory(conn: Connection, write: MemoryWrite, *, run_id: str, step: str,
                 now: datetime) -> list[int]:
    """Insert a step's turns (and summary) in the caller's transaction; the turns' seqs."""
    seqs: list[int] = []
    if write.turns:
        for attempt in range(SEQ_RETRIES):
            try:
                with conn.begin_nested():
                    first = _next_seq(conn, write.workflow, write.conversation)
                    seqs = list(range(first, first + len(write.turns)))
                    conn.execute(insert(MemoryTurnRow), [{
                        "workflow": write.workflow, "conversation": write.conversation,
                        "seq": seq, "role": role, "content": content, "tokens": tokens,
                        "run_id": run_id, "step": step, "created_at": now,
                    } for seq, (role, content, tokens) in zip(seqs, write.turns, strict=True)])
                break
            except IntegrityError:  # another run took these numbers first: read again
                if attempt == SEQ_RETRIES - 1:
                    raise
    if write.summary is not None:
        _write_summary(conn, write, write.summary, run_id, now)
    return seqs


def _next_seq(conn: Connection, workflow: str, conversation: str) -> int:
    turns = conn.execute(select(func.max(MemoryTurnRow.seq)).where(
        MemoryTurnRow.workflow == workflow, MemoryTurnRow.conversation == conversation)).scalar()
    # A summary outlives the turns it covers under retention: numbers never go back.
    covered = conn.execute(select(func.max(MemorySummaryRow.upto_seq)).where(
        MemorySummaryRow.workflow == workflow,
        MemorySummaryRow.conversation == conversation)).scalar()
    return max(int(turns or 0), int(covered or 0)) + 1


def _write_summary(conn: Connection, write: MemoryWrite, summary: Summary, run_id: str,
                   now: datetime) -> None:
    """Keep the newest summary only; a summary older than the stored one is dropped."""
    where = (MemorySummaryRow.workflow == write.workflow,
             MemorySummaryRow.conversation == write.conversation)
    try:
        with conn.begin_nested():
            newest = conn.execute(select(func.max(MemorySummaryRow.upto_seq)).where(*where)
                                  ).scalar()
            if newest is not None and int(newest) >= summary.upto_seq:
                return  # a concurrent run summarised as far or further
            conn.execute(insert(MemorySummaryRow), [{
                "workflow": write.workflow, "conversation": write.conversation,
                "upto_seq": summary.upto_seq, "content": summary.content,
                "tokens": summary.tokens, "run_id": run_id, "created_at": now}])
            conn.execute(delete(MemorySummaryRow).where(
                *where, MemorySummaryRow.upto_seq < summary.upto_seq))
    except IntegrityError:
        pass  # a concurrent run wrote a summary up to the same turn: keep theirs


class MemoryStore:
    """Reads, erasure and retention of conversation memory in one results store."""

    def __init__(self, writer: Engine, reader: Engine) -> None:
        self._writer = writer
        self._reader = reader

    def load(self, workflow: str, conversation: str) -> tuple[Summary | None, list[Turn]]:
        """The newest summary and the turns after it, oldest first."""
        with self._reader.connect() as conn:
            row = conn.execute(select(MemorySummaryRow).where(
                MemorySummaryRow.workflow == workflow,
                MemorySummaryRow.conversation == conversation,
            ).order_by(MemorySummaryRow.upto_seq.desc()).limit(1)).first()
            summary = _summary(row) if row is not None else None
            turns = conn.execute(select(MemoryTurnRow).where(
                MemoryTurnRow.workflow == workflow, MemoryTurnRow.conversation == conversation,
                MemoryTurnRow.seq > (summary.upto_seq if summary else 0),
            ).order_by(MemoryTurnRow.seq)).all()
        return summary, [_turn(turn) for turn in turns]

    def turns(self, conversation: str, workflow: str | None = None) -> dict[str, list[Turn]]:
        """Every stored turn of a conversation, by workflow, oldest first."""
        query = select(MemoryTurnRow).where(MemoryTurnRow.conversation == conversation)
        if workflow is not None:
            query = query.where(MemoryTurnRow.workflow == workflow)
        found: dict[str, list[Turn]] = {}
        with self._reader.connect() as conn:
            for row in conn.execute(query.order_by(MemoryTurnRow.workflow, MemoryTurnRow.seq)):
                found.setdefault(row.workflow, []).append(_turn(row))
        return found

    def summaries(self, conversation: str, workflow: str | None = None) -> dict[str, Summary]:
        """The newest summary of a conversation, by workflow."""
        query = select(MemorySummaryRow).where(MemorySummaryRow.conversation == conversation)
        if workflow is not None:
            query = query.where(MemorySummaryRow.workflow == workflow)
        found: dict[str, Summary] = {}
        with self._reader.connect() as conn:
            for row in conn.execute(query.order_by(MemorySummaryRow.upto_seq)):
                found[row.workflow] = _summary(row)
        return found

    def runs_of(self, conversation: str, keys: Mapping[str, str],
                workflow: str | None = None) -> list[str]:
        """Runs that carried a conversation: those that wrote its turns, those whose key
        input (``keys``: workflow -> input name) names it, and their child runs."""
        found: set[str] = set()
        with self._reader.connect() as conn:
            written = select(MemoryTurnRow.run_id).where(
                MemoryTurnRow.conversation == conversation, MemoryTurnRow.run_id.is_not(None))
            if workflow is not None:
                written = written.where(MemoryTurnRow.workflow == workflow)
            found.update(str(run) for (run,) in conn.execute(written.distinct()))
            for name, key in keys.items():
                if workflow is not None and name != workflow:
                    continue
                # The text search narrows; the exact test on the input decides.
                rows = conn.execute(select(RunRow.id, RunRow.inputs).where(
                    RunRow.workflow == name,
                    cast(RunRow.inputs, Text).contains(conversation, autoescape=True)))
                found.update(row.id for row in rows
                             if isinstance(row.inputs, dict) and key in row.inputs
                             and str(row.inputs[key]) == conversation)
            pending = list(found)
            while pending:
                children = conn.execute(select(RunRow.id).where(
                    RunRow.parent_run_id.in_(pending))).all()
                pending = [row.id for row in children if row.id not in found]
                found.update(pending)
        return sorted(found)

    def forget(self, conversation: str, *, runs: Iterable[str] = (),
               workflow: str | None = None) -> Forgotten:
        """Erase a conversation: its turns, its summaries, and ``runs`` (see ``runs_of``)
        with their steps, attempts, waits, map chunks and events, in one transaction."""
        run_ids = sorted(set(runs))
        turns_where = [MemoryTurnRow.conversation == conversation]
        summaries_where = [MemorySummaryRow.conversation == conversation]
        if workflow is not None:
            turns_where.append(MemoryTurnRow.workflow == workflow)
            summaries_where.append(MemorySummaryRow.workflow == workflow)
        with self._writer.begin() as conn:
            turns = conn.execute(delete(MemoryTurnRow).where(*turns_where)).rowcount
            summaries = conn.execute(delete(MemorySummaryRow).where(*summaries_where)).rowcount
            events = 0
            for start in range(0, len(run_ids), 500):
                chunk = run_ids[start:start + 500]
                events += conn.execute(delete(EventRow).where(EventRow.run_id.in_(chunk))
                                       ).rowcount
                # A child's parent link is cleared first (forgotten children go too).
                conn.execute(update(RunRow).where(RunRow.parent_run_id.in_(chunk))
                             .values(parent_run_id=None))
                for table in (MapChunkRow, WaitRow, AttemptRow, StepRow):
                    conn.execute(delete(table).where(table.run_id.in_(chunk)))
                conn.execute(delete(RunRow).where(RunRow.id.in_(chunk)))
        return Forgotten(int(turns or 0), int(summaries or 0), len(run_ids), int(events or 0))

    def prune(self, workflow: str, before: datetime) -> int:
        """Delete a workflow's turns and summaries written before ``before``; how many."""
        with self._writer.begin() as conn:
            turns = conn.execute(delete(MemoryTurnRow).where(
                MemoryTurnRow.workflow == workflow, MemoryTurnRow.created_at < before)).rowcount
            summaries = conn.execute(delete(MemorySummaryRow).where(
                MemorySummaryRow.workflow == workflow,
                MemorySummaryRow.created_at < before)).rowcount
        return int(turns or 0) + int(summaries or 0)


def _turn(row: Any) -> Turn:
    return Turn(int(row.seq), row.role, row.content, int(row.tokens), row.run_id, row.step,
                as_utc(row.created_at))


def _summary(row: Any) -> Summary:
    return Summary(int(row.upto_seq), row.content, int(row.tokens), row.run_id,
                   as_utc(row.created_at))
