"""The batch buffer on PostgreSQL: elements joining at the same moment never miss a full
batch (each join counts the buffer after its commit), and two flushes never take the
same element."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from orchestration.core.clock import utcnow
from orchestration.store.batches import Batches
from orchestration.store.repository import PlannedStep, Store

pytestmark = [pytest.mark.postgres]

STEPS = [PlannedStep("score", "score", "q", None, True)]
SIZE = 10


@pytest.fixture
def store(postgres_database: str) -> Iterator[Store]:
    store = Store(postgres_database)
    store.ensure_schema()
    yield store
    store.dispose()


def test_concurrent_joins_always_see_a_full_batch(store: Store) -> None:
    buffer = Batches(store.engine, store.reader)
    for _ in range(10):
        step = f"race_{uuid.uuid4().hex[:8]}.score"
        runs = [store.create_run(str(uuid.uuid4()), "race", "v1", {}, STEPS)
                for _ in range(SIZE)]
        barrier = threading.Barrier(SIZE)
        counts: list[int] = []

        def join(run_id: str, step: str = step, barrier: threading.Barrier = barrier,
                 counts: list[int] = counts) -> None:
            barrier.wait()
            counts.append(buffer.join(step, run_id, "score", kwargs={}, resume={},
                                      prior_attempts=0, claimed_at=None, now=utcnow()))

        threads = [threading.Thread(target=join, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert max(counts) == SIZE, counts  # some join saw the batch full: it flushes


def test_two_takers_never_share_an_element(store: Store) -> None:
    buffer = Batches(store.engine, store.reader)
    step = f"share_{uuid.uuid4().hex[:8]}.score"
    now = utcnow()
    for _ in range(4 * SIZE):
        run_id = store.create_run(str(uuid.uuid4()), "share", "v1", {}, STEPS)
        buffer.join(step, run_id, "score", kwargs={}, resume={}, prior_attempts=0,
                    claimed_at=None, now=now)
    taken: list[list[int]] = []
    barrier = threading.Barrier(4)
    # Holders count as alive if they beat in the last minute, as a worker passes
    # ``now - dead_after``. (With ``alive_since=utcnow()`` holder "h", which never beats,
    # would be dead: a batch it took a moment before is an orphan, rightly taken again.)
    alive_since = utcnow() - timedelta(seconds=60)

    def take() -> None:
        barrier.wait()
        batch = buffer.take(step, size=SIZE, wait=3600, now=utcnow(), holder="h",
                            lease=60, alive_since=alive_since)
        taken.append([e.id for e in batch.elements] if batch else [])

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for batch in taken for i in batch]
    assert len(ids) == len(set(ids))
    assert all(len(batch) in (0, SIZE) for batch in taken)  # never a partial batch


def test_the_same_element_joining_twice_at_once_is_buffered_once(store: Store) -> None:
    buffer = Batches(store.engine, store.reader)
    for _ in range(10):
        step = f"twice_{uuid.uuid4().hex[:8]}.score"
        run_id = store.create_run(str(uuid.uuid4()), "twice", "v1", {}, STEPS)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def join(step: str = step, run_id: str = run_id,
                 barrier: threading.Barrier = barrier,
                 errors: list[BaseException] = errors) -> None:
            barrier.wait()
            try:
                buffer.join(step, run_id, "score", kwargs={}, resume={}, prior_attempts=0,
                            claimed_at=None, now=utcnow())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=join) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert buffer.counts(step) == {"waiting": 1}
