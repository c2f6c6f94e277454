"""The Redis Streams source: consumers in a group lose no entry and start no run twice.

Each test has a Redis server of its own holding its stream (the broker is the session's
Redis, where a threads worker of this module runs the started runs). Consumers are
subprocesses: ``orchestrate consume`` itself, and, where one must be killed between
ingesting an entry and acknowledging it, ``support/event_processes.py``'s slow consumer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from orchestration import RunHandle, RunStatus, default_orchestrator
from orchestration.events import run_key
from orchestration.store.models import EventRow
from tests.integration.support.workflows import events as ew
from tests.support.own_redis import OwnRedis, own_redis
from tests.support.polling import wait_until
from tests.support.processes import ORCHESTRATE, ROOT, child_env
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
MODULE = ew.__name__
GROUP = "it-group"
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def events_worker(redis_service: Any, postgres_database: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """A threads worker on the events queue, importing the events workflows."""
    pool = Workers(tmp_path_factory.mktemp("stream-worker"), child_env(imports=[MODULE]))
    try:
        pool.start("it-events-stream", [ew.EVENTS_QUEUE], pool="threads", concurrency=4)
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def stream_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path) as server:
        yield server


class Consumer:
    """A consumer subprocess, logging to a file; killed at the end of the test."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=child_env(imports=[MODULE]),
                                            stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def consumers(tmp_path: Path) -> Iterator[list[Consumer]]:
    started: list[Consumer] = []
    yield started
    for consumer in started:
        consumer.kill()


def cli_consumer(consumers: list[Consumer], tmp_path: Path, url: str, stream: str,
                 name: str, *extra: str) -> Consumer:
    consumer = Consumer([*ORCHESTRATE, "consume", "--stream", stream, "--group", GROUP,
                         "--consumer", name, "--redis-url", url, *extra],
                        tmp_path / f"{name}.log")
    consumers.append(consumer)
    return consumer


def started_rows(event_ids: list[str]) -> dict[str, list[str]]:
    """For each event id, the outcomes recorded for it."""
    with default_orchestrator().store.reader.connect() as conn:
        found = conn.execute(select(EventRow.event_id, EventRow.outcome).where(
            EventRow.event_id.in_(event_ids))).all()
    outcomes: dict[str, list[str]] = {event_id: [] for event_id in event_ids}
    for event_id, outcome in found:
        outcomes[event_id].append(outcome)
    return outcomes


def pending(client: redis.Redis, stream: str) -> dict[str, int]:
    """Entries read and not acknowledged, per consumer."""
    summary = client.xpending(stream, GROUP)
    return {c["name"]: int(c["pending"]) for c in summary["consumers"]}


def test_a_consumer_killed_mid_batch_loses_nothing_and_starts_nothing_twice(
        events_worker: Workers, stream_redis: OwnRedis, consumers: list[Consumer],
        tmp_path: Path) -> None:
    client = redis.Redis.from_url(stream_redis.url, decode_responses=True)
    stream, count = f"it-stream-{uuid.uuid4().hex[:8]}", 12
    entry_ids = [client.xadd(stream, {"name": ew.STREAM_ITEM,
                                      "payload": json.dumps({"n": n})}) for n in range(count)]
    slow = Consumer([*event_processes_argv(stream_redis.url, stream, "slow", pause=0.5)],
                    tmp_path / "slow.log")
    consumers.append(slow)
    # It read the whole batch and is between ingesting an entry and acknowledging it.
    wait_until(lambda: sum("started" in o for o in started_rows(entry_ids).values()) >= 3,
               timeout=TIMEOUT_S, what=f"the slow consumer to start 3 runs\n{slow.text()}")
    slow.kill()
    left = pending(client, stream)
    assert 0 < left.get("slow", 0) < count, left  # killed mid-batch, entries pending on it
    assert sum("started" in o for o in started_rows(entry_ids).values()) < count

    rescuer = cli_consumer(consumers, tmp_path, stream_redis.url, stream, "rescuer",
                           "--claim-idle", "1")
    wait_until(lambda: not any(pending(client, stream).values()) and all(
        "started" in o for o in started_rows(entry_ids).values()),
        timeout=TIMEOUT_S, what=f"the rescuer to claim every entry\n{rescuer.text()}")
    outcomes = started_rows(entry_ids)
    assert {event_id: found.count("started") for event_id, found in outcomes.items()} == {
        event_id: 1 for event_id in entry_ids}
    assert all(set(found) <= {"started", "duplicate"} for found in outcomes.values())
    store = default_orchestrator().store
    for n, entry_id in enumerate(entry_ids):
        run_id = store.find_by_idempotency_key(run_key(ew.STREAM_TRIGGER.name, entry_id))
        assert run_id is not None
        result = RunHandle(run_id, store).wait(TIMEOUT_S)
        assert (result.status, result.outputs) == (RunStatus.SUCCEEDED, {"double": 2 * n})
    assert "claimed stream entries from a stalled consumer" in rescuer.text()


def event_processes_argv(url: str, stream: str, name: str, *, pause: float) -> list[str]:
    return [*ORCHESTRATE[:1], "-m", "tests.integration.support.event_processes", url, stream,
            GROUP, name, str(pause)]


def test_malformed_entries_are_recorded_rejected_and_acknowledged(
        events_worker: Workers, stream_redis: OwnRedis, consumers: list[Consumer],
        tmp_path: Path) -> None:
    client = redis.Redis.from_url(stream_redis.url, decode_responses=True)
    stream = f"it-stream-{uuid.uuid4().hex[:8]}"
    good = client.xadd(stream, {"name": ew.STREAM_ITEM, "payload": '{"n": 21}',
                                "id": f"order-{uuid.uuid4().hex[:8]}"})
    no_name = client.xadd(stream, {"payload": "{}"})
    not_json = client.xadd(stream, {"name": ew.STREAM_ITEM, "payload": "{n: 1"})
    no_path = client.xadd(stream, {"name": ew.STREAM_ITEM, "payload": '{"m": 1}'})
    consumer = cli_consumer(consumers, tmp_path, stream_redis.url, stream, "only")
    wait_until(lambda: client.xinfo_groups(stream) and
               client.xinfo_groups(stream)[0]["lag"] == 0 and not any(
                   pending(client, stream).values()),
               timeout=TIMEOUT_S, what=f"every entry acknowledged\n{consumer.text()}")
    events = default_orchestrator().store.events
    order_id = client.xrange(stream, good, good)[0][1]["id"]
    [started] = events.recent(event_id=order_id)
    assert (started.record.outcome, started.record.source) == ("started", "stream")
    reasons = {entry: events.recent(event_id=entry)[0].record for entry in
               (no_name, not_json, no_path)}
    assert {entry: (r.outcome, r.reason) for entry, r in reasons.items()} == {
        no_name: ("rejected", "the entry has no field 'name'"),
        not_json: ("rejected", "field 'payload' is not JSON: Expecting property name "
                               "enclosed in double quotes: line 1 column 2 (char 1)"),
        no_path: ("rejected", "$.n: no such key at $.n")}
    consumer.process.send_signal(signal.SIGTERM)
    assert consumer.process.wait(15) == 0  # stoppable: SIGTERM ends the loop cleanly


def test_redis_down_is_retried_and_logged_until_it_comes_back(
        events_worker: Workers, consumers: list[Consumer], tmp_path: Path) -> None:
    server = OwnRedis(tmp_path)  # not started yet: nothing listens on its port
    stream = f"it-stream-{uuid.uuid4().hex[:8]}"
    consumer = cli_consumer(consumers, tmp_path, server.url, stream, "patient")
    wait_until(lambda: consumer.text().count("cannot proceed; retrying") >= 2,
               timeout=TIMEOUT_S, what=f"the consumer to log its retries\n{consumer.text()}")
    assert consumer.process.poll() is None  # never exits on its own
    server.start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        entry = client.xadd(stream, {"name": ew.STREAM_ITEM, "payload": '{"n": 5}'})
        store = default_orchestrator().store
        run_id = wait_until(lambda: store.find_by_idempotency_key(
            run_key(ew.STREAM_TRIGGER.name, entry)), timeout=TIMEOUT_S,
            what=f"the run of the entry added once Redis was back\n{consumer.text()}")
        assert RunHandle(run_id, store).wait(TIMEOUT_S).outputs == {"double": 10}
    finally:
        consumer.kill()
        server.stop()
