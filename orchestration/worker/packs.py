"""Running a pack: several runs' step messages delivered as one (compile/packing.py).

Each run of a pack goes through the step task exactly as its own message would, under a
stand-in for the task (:class:`OneOfPack`) whose request is that run's message: its own
claim, attempts, record and outcome. What Celery would do to the message of one run is
done to that run alone, by sending a message of its own: a broker retry (``Reschedule``,
a hand-back while the results DB is down) sends the run's message again with the
countdown; a replacement (a map, a child run) sends the replacement. A run parked for a
person stores its own message. So one run failing, retrying or waiting never touches
its neighbours, and the pack's message is acknowledged when every run in it is done or
sent on. A worker that dies mid-pack has the message delivered again: the runs already
recorded pass their outcomes on, the others are claimed again (the claim counts the
crash), as for any message.

The runs of a pack run ``ORCH_PACK_CONCURRENCY`` at a time, on threads the process keeps
between packs: a pack of model calls waits for them together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from celery.exceptions import Reject

from orchestration.core.envelope import is_envelope
from orchestration.core.threads import run_bounded
from orchestration.worker.standin import StandIn, run_alone

log = structlog.get_logger("orchestration.worker.packs")
T = TypeVar("T")


class OneOfPack(StandIn):
    """The step task as one run of a pack sees it: ``request`` is that run's message."""

    def __init__(self, task: Any, index: int, message: Any, kwargs: dict[str, Any],
                 outer: Any = None) -> None:
        super().__init__(task, index, (message,), kwargs, outer=outer)


def run_pack(task: Any, execute: Any, pack: list[Any], kwargs: dict[str, Any],
             concurrency: int) -> None:
    """Run every run of a pack through ``execute`` (the step task's body), independently.

    Raises ``Reject(requeue=True)`` when a run could be neither finished nor sent on
    alone (results DB and broker both down): the pack comes back whole.
    """
    delivery = task.request  # read here: on the runners' threads it is empty
    shared = {key: value for key, value in kwargs.items() if key != "pack"}
    refused: list[str] = []

    def one(index: int, item: Any) -> None:
        message, run_id = (item if isinstance(item, list | tuple) and len(item) == 2
                           else (None, None))
        if not isinstance(run_id, str) or not is_envelope(message):
            # Its neighbours go on; its run (if it has one) is re-sent by the reconciler.
            log.error("malformed run in a pack dropped", task=task.name,
                      task_id=task.request.id, index=index)
            return
        own = {**shared, "run_id": run_id}
        if not run_alone(OneOfPack(task, index, message, own, outer=delivery), execute):
            refused.append(run_id)  # neither run nor sent on: the pack is returned whole

    run_each(pack, one, concurrency)
    if refused:
        raise Reject(f"{len(refused)} run(s) of the pack could not be sent on", requeue=True)


def run_each(items: list[T], one: Callable[[int, T], None], concurrency: int) -> None:
    """``one(index, item)`` for every item, ``concurrency`` at a time, each in a copy of
    the caller's context.

    One runner is this thread (so a pack or bundle nested in one always makes progress),
    the others are the process's kept pack threads: what a thread keeps, e.g. its
    keep-alive connection to a model provider, outlives one pack.
    """
    run_bounded(lambda pair: one(*pair), list(enumerate(items)), concurrency, pool="pack",
                inherit=True, here=True)
