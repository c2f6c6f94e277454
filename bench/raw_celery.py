"""Plain Celery with the engine's broker, backend and settings: the baseline of the bench.

The configuration is the engine's own (``config.celery.celery_config``) for the same
broker URL, so serialisation, acks_late, prefetch, events, result backend options and
visibility timeout are identical; only ``imports`` and the default queue differ.

Worker: ``python -m celery -A bench.raw_celery worker -Q bench.raw ...``
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, chain, chord
from celery.canvas import Signature

from config.celery import celery_config
from orchestration.core.settings import Settings

QUEUE = "bench.raw"
DEFAULT_BROKER = "redis://127.0.0.1:6379/14"


def _config() -> dict[str, Any]:
    broker = os.environ.get("ORCH_BROKER_URL") or DEFAULT_BROKER
    settings = Settings(broker_url=broker,
                        result_backend=os.environ.get("ORCH_RESULT_BACKEND") or None,
                        imports=[])
    config = celery_config(settings)
    config["imports"] = [__name__]
    config["task_default_queue"] = QUEUE
    return config


raw = Celery("raw")
raw.conf.update(_config())


@raw.task(name="bench.raw.noop", queue=QUEUE)
def noop(x: int) -> int:
    return x


@raw.task(name="bench.raw.merge", queue=QUEUE)
def merge(xs: list[int]) -> int:
    return sum(xs)


def linear_canvas(x: int) -> Signature:
    """The raw counterpart of ``bench_linear``: four no-op tasks in a chain."""
    return chain(noop.s(x), noop.s(), noop.s(), noop.s())


def diamond_canvas(x: int) -> Signature:
    """The raw counterpart of ``bench_diamond``: a -> chord([b, c], d)."""
    return chain(noop.s(x), chord([noop.s(), noop.s()], merge.s()))


CANVASES = {"linear": linear_canvas, "diamond": diamond_canvas}
app = raw
