"""Runs started by ``orchestrate submit --priority``, ``orchestrate emit --priority`` and a
schedule with a priority carry it: into ``runs.priority`` (PostgreSQL) and onto the
broker (the Redis list of that level; kombu pops ``queue`` then ``queue:1`` ... first,
so priority p waits in ``queue:<9 - p>``).

The CLI runs as a child process (``python -m orchestration.cli``) importing the test
workflow; the beat runs here with a fake clock, as in ``test_schedules.py``. No worker
serves the queue, so every run's first message stays where it was sent.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from orchestration import Workflow
from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from orchestration.events.beat import Beat
from orchestration.events.outcomes import Outcome
from tests.integration.support.workflows.priority_starters import (
    EVENT,
    QUEUE,
    TRIGGER_PRIORITY,
    WORKFLOW,
)
from tests.support.processes import child_env, orchestrate

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

MODULE = "tests.integration.support.workflows.priority_starters"
LEVELS = [QUEUE] + [f"{QUEUE}:{level}" for level in range(1, 10)]


@pytest.fixture
def broker(redis_service: redis.Redis) -> Iterator[redis.Redis]:
    """The session's broker DB; this test's queue emptied before and after."""
    client = redis.Redis.from_url(os.environ["ORCH_BROKER_URL"])
    client.delete(*LEVELS)
    yield client
    client.delete(*LEVELS)


@pytest.fixture
def orchestrator() -> Iterator[Orchestrator]:
    """An orchestrator of the test's own (the session's Redis and PostgreSQL)."""
    built = Orchestrator(Settings())
    yield built
    built.shutdown()


def _level(priority: int) -> str:
    return f"{QUEUE}:{9 - priority}" if priority < 9 else QUEUE


def _waiting(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each level list of the queue (empty lists left out)."""
    counts = {name: int(client.llen(name)) for name in LEVELS}
    return {name: count for name, count in counts.items() if count}


def test_cli_submit_and_emit_start_runs_at_the_given_priority(
        broker: redis.Redis, orchestrator: Orchestrator) -> None:
    env = child_env(imports=[MODULE])
    submitted = orchestrate("submit", WORKFLOW, "--inputs", '{"text": "urgent"}',
                            "--priority", "6", env=env, check=True)
    run_id = submitted.stdout.strip().splitlines()[-1]
    event_id = f"it-prio-{uuid.uuid4().hex[:8]}"
    orchestrate("emit", EVENT, "--payload", '{"text": "hi"}', "--event-id", event_id,
                "--priority", "4", env=env, check=True)
    orchestrate("emit", EVENT, "--payload", '{"text": "hi"}', "--event-id", f"{event_id}-own",
                env=env, check=True)
    store = orchestrator.store
    [emitted] = [row.record.run_id for row in store.events.recent(event_id=event_id)]
    [own] = [row.record.run_id for row in store.events.recent(event_id=f"{event_id}-own")]
    assert emitted is not None and own is not None
    assert store.priority_of(run_id) == 6
    assert store.priority_of(emitted) == 4
    assert store.priority_of(own) == TRIGGER_PRIORITY  # the trigger's own
    assert _waiting(broker) == {_level(6): 1, _level(4): 1, _level(TRIGGER_PRIORITY): 1}
    refused = orchestrate("submit", WORKFLOW, "--inputs", '{"text": "x"}', "--priority", "12",
                          env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "priority must be an int from 0 to 9" in refused.stdout + refused.stderr
    assert len(store.list_runs(workflow=WORKFLOW, limit=100)) >= 3
    assert _waiting(broker) == {_level(6): 1, _level(4): 1, _level(TRIGGER_PRIORITY): 1}


def test_a_schedule_starts_its_runs_at_its_priority(broker: redis.Redis,
                                                    orchestrator: Orchestrator) -> None:
    name = f"it_prio_sched_{uuid.uuid4().hex[:10]}"
    workflow = Workflow(name, inputs=["text"], queue=QUEUE, orchestrator=orchestrator)

    @workflow.task
    def build(text: str) -> str:
        return text

    workflow.schedule("* * * * *", inputs={"text": "tick"}, overlap="allow", name=name,
                      priority=8)
    start = datetime(2026, 1, 5, 9, 0, 30, tzinfo=UTC)
    now = [start]
    beat = Beat(orchestrator, clock=lambda: now[0])
    assert beat.tick() == []  # before the first tick
    now[0] = start + timedelta(seconds=32)
    [outcome] = beat.tick()
    assert outcome.outcome is Outcome.STARTED and outcome.run_id is not None
    assert orchestrator.store.priority_of(outcome.run_id) == 8
    assert _waiting(broker) == {_level(8): 1}
