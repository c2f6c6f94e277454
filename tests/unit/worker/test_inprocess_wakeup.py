"""The in-process broker wakes its consumers on a put or an ack: no hop waits for a poll.

kombu's virtual transports sleep ``polling_interval`` whenever a consumer finds its
queues empty, so every hop of a run on the embedded default (the next step's message, a
join's callback) waited for the next poll. Here the polling interval is an hour and
kombu's sleep is counted: runs of the stateful-agent shape (parallel steps, a ``when=``
branch pair, a join) finish with every message delivered by a wake-up, and the sleep is
never called.
"""

from __future__ import annotations

from pathlib import Path

import kombu.transport.virtual.base as virtual_base
import pytest

from orchestration import RunStatus
from orchestration.testing import embedded_orchestrator
from orchestration.worker.inprocess import Wakeup
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
