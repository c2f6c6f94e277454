"""Processes of the events tests: emitters released together, and a dawdling consumer.

- :func:`emit_together` runs in a child process (multiprocessing, spawn): it builds the
  default orchestrator from the environment, waits at a barrier with its siblings, then
  emits one event, so several processes deliver the same event id at the same moment.
- ``python -m tests.integration.support.event_processes URL STREAM GROUP CONSUMER PAUSE``
  is the test's stand-in for ``orchestrate consume`` when it must be killed mid-batch:
  each entry is ingested, then the consumer sleeps ``PAUSE`` seconds before its XACK, so a
  SIGKILL lands between the two (the run started, the entry still pending) or before
  later entries of its batch were read at all.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any

from orchestration import default_orchestrator, emit
from orchestration.events.stream import StreamConsumer, StreamOptions, connect


def _load() -> Any:
    host = default_orchestrator()
    for module in host.settings.imports:
        importlib.import_module(module)
    return host


def emit_together(barrier: Any, module: str, event: tuple[str, Any, str]) -> None:
    """Import ``module`` (its triggers), emit ``(name, payload, event_id)`` once every
    sibling is ready (what each did is in the events table)."""
    _load()
    importlib.import_module(module)
    name, payload, event_id = event
    emit("it.warmup", {}, event_id=None)  # connect to the DB before the race
    barrier.wait(timeout=60)
    emit(name, payload, event_id=event_id)


def consume_slowly(url: str, stream: str, group: str, consumer: str, pause: str) -> None:
    """Consume with a pause between each ingest and its acknowledgement."""
    host = _load()
    options = StreamOptions(stream=stream, group=group, consumer=consumer, batch=100,
                            claim_idle=600.0)
    reader = StreamConsumer(host, connect(url), options,
                            observer=lambda entry, outcomes: time.sleep(float(pause)))
    print("consuming", flush=True)
    reader.run()


if __name__ == "__main__":
    consume_slowly(*sys.argv[1:6])
