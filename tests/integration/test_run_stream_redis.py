"""The run stream on Redis Streams, and handle.stream() of a run on a real worker process.

The storage checks run against the session's Redis; the end-to-end test starts a worker
(threads pool) consuming ``it.live`` whose catalogue points at a fake LLM server in this
process, and reads the run's stream here while the worker runs it.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestration import default_orchestrator
from orchestration.core.stream_events import RUN_FINISHED, StreamEvent, event
from orchestration.store.run_stream import RedisRunStream, stream_key
from tests.fakes.llm_server import FakeLLMServer
from tests.integration.support.workflows import live as lw
from tests.support.workers import Workers

KEY_ENV = "FAKE_LLM_KEY"
REPLY = "Thanks for the report: the login bug is fixed in version 3.2.1, please update."


@pytest.mark.redis
def test_redis_stream_order_offsets_once_bounds_and_delete(redis_service: redis.Redis) -> None:
    stream = RedisRunStream(redis_service, maxlen=50, ttl=120)
    run = f"it-{uuid.uuid4().hex}"
    offsets = [stream.append(run, event("token", run, index=i)) for i in range(3)]
    offsets += stream.append_many(run, [event("token", run, index=i) for i in range(3, 6)])
    read = stream.read(run)
    assert [o for o, _ in read] == offsets and [d["index"] for _, d in read] == list(range(6))
    for cut in range(len(offsets)):
        assert [o for o, _ in stream.read(run, offsets[cut])] == offsets[cut + 1:]
    assert stream.append_once(run, event(RUN_FINISHED, run, status="succeeded")) is not None
    assert stream.append_once(run, event(RUN_FINISHED, run, status="failed")) is None
    assert [d["type"] for _, d in stream.read(run, offsets[-1])] == [RUN_FINISHED]
    assert 0 < redis_service.ttl(stream_key(run)) <= 120
    for start in range(0, 1000, 100):
        stream.append_many(run, [event("token", run, index=i) for i in range(start, start + 100)])
    kept = stream.read(run)
    assert len(kept) < 300 and kept[-1][1]["index"] == 999  # MAXLEN ~ 50: the newest kept
    timer = threading.Timer(0.05, lambda: stream.append(run, event("token", run, index=-1)))
    timer.start()
    try:
        assert [d["index"] for _, d in stream.read(run, kept[-1][0], block=10)] == [-1]
    finally:
        timer.join()
    stream.delete(run)
    assert stream.read(run) == [] and not redis_service.exists(stream_key(run))


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def live_worker(redis_service: redis.Redis, postgres_database: str, worker_logs: Path,
                fake_llm: FakeLLMServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    models = tmp_path_factory.mktemp("live") / "models.yaml"
    models.write_text(json.dumps({
        "providers": {"fake": {"kind": "openai", "base_url": fake_llm.url,
                               "api_key_env": KEY_ENV}},
        "models": {lw.STREAM_MODEL: {"provider": "fake", "input_cost_per_1k": 1.0,
                                     "output_cost_per_1k": 1.0}}}))
    env = dict(os.environ, ORCH_MODELS_FILE=str(models), **{KEY_ENV: "sk-fake-test"},
               ORCH_IMPORTS="tests.integration.support.workflows.live")
    pool = Workers(worker_logs, env=env)
    try:
        pool.start("it-live", [lw.LIVE_QUEUE], pool="threads", concurrency=4)
        yield pool
    finally:
        pool.stop_all()


@pytest.mark.redis
@pytest.mark.postgres
def test_a_run_on_a_worker_streams_live_and_resumes_from_an_offset(
        live_worker: Workers, fake_llm: FakeLLMServer) -> None:
    fake_llm.configure(lw.STREAM_MODEL, reply=REPLY, chunk_delay_ms=20,
                       prompt_tokens=30, completion_tokens=14)
    handle = lw.live.submit(text="  I cannot log in since the update  ")
    seen: list[StreamEvent] = []
    for item in handle.stream(timeout=60):  # read while the worker runs it
        seen.append(item)
        if item.type == "token" and len(seen) < 200 and sum(
                e.type == "token" for e in seen) == 3:
            break  # drop the connection mid-answer...
    resumed = list(handle.stream(after=seen[-1].offset, timeout=60))  # ...and resume
    events = seen + resumed
    assert events == list(handle.stream(timeout=60))  # nothing lost, nothing repeated
    assert events[-1].type == RUN_FINISHED and events[-1]["status"] == "succeeded"
    assert "-" in events[0].offset  # Redis stream ids
    types: dict[str | None, list[str]] = {}
    for item in events:
        types.setdefault(item.step, []).append(item.type)
    assert types["intake"] == ["step_started", "partial_output", "step_finished"]
    assert types["draft"][0] == "step_started" and types["draft"][-1] == "step_finished"
    text = "".join(e["text"] for e in events if e.type == "token")
    assert text == REPLY
    for step in ("score", "publish"):
        assert types[step] == ["step_started", "step_finished"]
    order = [(e.step, e.type) for e in events]
    assert order.index(("draft", "step_finished")) < order.index(("publish", "step_started"))
    result = handle.wait(timeout=10)
    assert result.outputs["publish"] == {"draft": REPLY, "score": 7}
    started = next(e for e in events if e.type == "step_started" and e.step == "draft")
    assert started["worker"].startswith("it-live@") and started["queue"] == lw.LIVE_QUEUE
    assert default_orchestrator().run_stream.read(handle.run_id)[0][0] == events[0].offset
