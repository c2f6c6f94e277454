"""A submit's run row on PostgreSQL: one statement, no ping on a hot connection, and a
server restart between submits survived (a PostgreSQL cluster of the test's own).

The pool no longer pings every checkout (``pool_pre_ping``): a connection idle for
``PING_IDLE_S`` is pinged; a hot one that died fails its first statement, which
invalidates the pool, and ``retry_disconnect`` writes the run again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from orchestration.core.status import RunStatus
from orchestration.store import engine as engine_module
from orchestration.store.repository import PlannedStep, Store
from tests.support.own_postgres import OwnPostgres, own_postgres

STEPS = [PlannedStep(name, name, "q", None, True) for name in ("a", "b", "c", "d")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[OwnPostgres]:
    with own_postgres() as own:
        yield own


@pytest.fixture
def store(cluster: OwnPostgres) -> Iterator[Store]:
    store = Store(cluster.url)
    store.ensure_schema()
    yield store
    store.dispose()


def statements(store: Store) -> list[str]:
    """Every statement the store's engine sends from now on."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    return seen


def submit(store: Store, key: str | None = None) -> str:
    return store.create_run(str(uuid.uuid4()), "wf", "v1", {"x": 1}, STEPS,
                            idempotency_key=key)


def test_the_run_and_its_steps_are_one_statement(store: Store) -> None:
    submit(store)  # a hot connection from here
    sent = statements(store)
    run_id = submit(store)
    assert len(sent) == 1 and sent[0].startswith("WITH new_run AS")
    run = store.get_run(run_id)
    assert run.status is RunStatus.PENDING and run.inputs == {"x": 1}
    assert sorted(run.steps) == ["a", "b", "c", "d"]


def test_an_idempotency_key_used_twice_gives_the_first_run(store: Store) -> None:
    key = f"k-{uuid.uuid4()}"
    first = submit(store, key)
    assert submit(store, key) == first


@pytest.mark.parametrize("idle", [0.0, 1e9], ids=["pinged-after-idle", "retried-when-hot"])
def test_a_restart_between_submits_is_survived(store: Store, cluster: OwnPostgres,
                                               monkeypatch: pytest.MonkeyPatch,
                                               idle: float) -> None:
    monkeypatch.setattr(engine_module, "PING_IDLE_S", idle)
    before = submit(store)
    cluster.stop()  # -m immediate: every pooled connection dies
    cluster.start()
    after = submit(store)
    assert store.get_run(before).status is RunStatus.PENDING
    assert sorted(store.get_run(after).steps) == ["a", "b", "c", "d"]


def test_a_status_read_on_a_hot_connection_survives_a_restart(
        store: Store, cluster: OwnPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "PING_IDLE_S", 1e9)  # never pinged: the retry acts
    run_id = submit(store)
    assert store.run_status(run_id) is RunStatus.PENDING
    cluster.stop()
    cluster.start()
    assert store.run_status(run_id) is RunStatus.PENDING
