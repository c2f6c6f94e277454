"""The in-process broker wakes its consumers on a put or an ack: no hop waits for a poll.

kombu's virtual transports sleep ``polling_interval`` whenever a consumer finds its
queues empty, so every hop of a run on the embedded default (the next step's message, a
join's callback) waited for the next poll. Here the polling interval is an hour and
kombu's sleep is counted: runs of the stateful-agent shape (parallel steps, a ``when=``
branch pair, a join) finish with every message delivered by a wake-up, and the sleep is
never called.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import kombu.transport.virtual.base as virtual_base
import pytest
from kombu import Connection, Exchange
from kombu import Queue as KombuQueue

from orchestration import RunStatus
from orchestration.testing import embedded_orchestrator
from orchestration.worker.inprocess import Wakeup, private_memory_transport
from tests.unit.worker.embedded_workflows import define_agent


def test_every_hop_is_delivered_by_a_wake_up_not_a_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    real_sleep = virtual_base.sleep

    def counted_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        real_sleep(min(seconds, 0.01))  # without wake-ups the runs would still end

    monkeypatch.setattr(virtual_base, "sleep", counted_sleep)
    with embedded_orchestrator(tmp_path, log_level="WARNING") as app:
        # Read when the consumers' and the producer's connections are made (first submit).
        app.celery.conf.broker_transport_options = {"polling_interval": 3600.0}
        agent = define_agent(app, "wakeup_agent", queue="wakeup")
        results = [agent.submit(goal=goal).wait(timeout=60) for goal in ("g", "gg", "g")]

        assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 3, \
            [r.error for r in results]
        assert [r.outputs["join"] for r in results] == ["None/ask", "act/None", "None/ask"]
        assert sleeps == []  # no consumer slept a polling interval
        wakeup = app.celery.conf.broker_transport.wakeup
        assert isinstance(wakeup, Wakeup)
        assert wakeup.notified_waits > 0  # consumers waited, and a put or an ack woke them


def test_a_wake_up_before_the_wait_is_not_lost() -> None:
    wakeup = Wakeup()
    seen = wakeup.generation
    wakeup.notify()  # between a consumer's empty poll and its wait
    wakeup.wait(seen, 3600.0)  # returns at once: the generation moved on
    assert wakeup.generation == seen + 1


def test_an_interrupt_returns_a_waiting_drain_to_its_loop() -> None:
    """A stopping in-process worker interrupts its consumer's wait (``_QueueWorker.stop``):
    the drain returns at once instead of after its timeout, so a shutdown waits for no poll.
    Here the drain has no timeout at all: without the interrupt it never returns."""
    transport = private_memory_transport()
    outcome: list[BaseException | None] = []
    with Connection(transport=transport) as connection:
        queue = KombuQueue("interrupted", Exchange("interrupted"), "interrupted")
        with connection.Consumer(queue, callbacks=[lambda body, message: None]):

            def drain() -> None:
                try:
                    connection.drain_events(timeout=None)
                    outcome.append(None)
                except TimeoutError as exc:
                    outcome.append(exc)

            waiter = threading.Thread(target=drain, daemon=True)
            waiter.start()
            deadline = time.monotonic() + 30
            while not _waiting(waiter):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            transport.wakeup.interrupt()
            waiter.join(10)
    assert not waiter.is_alive(), "the drain went on waiting after the interrupt"
    assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError)


def _waiting(thread: threading.Thread) -> bool:
    """True once ``thread`` sits in the broker's wait (its frame is in ``Wakeup.wait``)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "wait" and "inprocess" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False
