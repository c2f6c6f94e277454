"""What Celery shows of a step message: a summary naming the run, never its data.

Celery puts ``saferepr(args)`` and ``saferepr(kwargs)`` of every task message into the
message headers and its ``task-sent``/``task-received`` events, and ``saferepr`` of the
return value into ``task-succeeded``; Flower shows and keeps all three. A step's
argument and return value are the run's envelope: inputs and outputs, including values
the redaction rules keep out of the results DB and the logs. :class:`StepAMQP` (the app's
message builder) writes a summary instead: the run id and the delivery's plain options
(``fused``, ``chunk`` position and size...), which also saves a ``saferepr`` per publish.
:class:`StepEvents` does the same for the result in ``task-succeeded``, and
:class:`StepRequest` for what ``celery inspect active`` shows of a running task (the
result backend's share is in :mod:`orchestration.worker.result_backend`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from celery.app.amqp import AMQP
from celery.app.events import Events
from celery.app.task import Task
from celery.events.dispatcher import EventDispatcher
from celery.worker.request import Request

from orchestration.observe import tracing

# Plain values that help an operator and carry no run data.
_SHOWN = ("run_id", "step", "fused", "finalize", "total", "workflow", "count", "version")
_ENVELOPE_REPR = re.compile(r"\{'run': '([0-9a-zA-Z-]{1,64})'")


def args_summary(args: Any) -> str:
    """``(<envelope of run ...>,)`` for a step's envelope; a count for anything else."""
    if not args:
        return "()"
    parts = []
    for arg in args:
        if isinstance(arg, Mapping) and isinstance(arg.get("run"), str):
            parts.append(f"<envelope of run {arg['run']}>")
        else:
            parts.append(f"<{type(arg).__name__}>")
    return f"({', '.join(parts)},)"


def kwargs_summary(kwargs: Any) -> str:
    """The plain options (see ``_SHOWN``); other keys by name only."""
    if not isinstance(kwargs, Mapping) or not kwargs:
        return "{}"
    shown: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _SHOWN and _plain(value):
            shown[key] = value
        elif key == "chunk" and isinstance(value, Mapping):
            items = value.get("items")
            shown[key] = {"start": value.get("start"),
                          "items": len(items) if isinstance(items, list) else "<ref>"}
        elif key == "pack" and isinstance(value, list):  # several runs' envelopes
            shown[key] = f"<{len(value)} runs>"
        elif key == "fork" and isinstance(value, Mapping):  # the branches it sends
            branches = value.get("branches")
            shown[key] = f"<{len(branches) if isinstance(branches, list) else '?'} branches>"
        elif key == "join" and isinstance(value, Mapping):  # where this branch arrives
            shown[key] = f"<branch {value.get('index')} of {value.get('size')}>"
        elif key == "messages" and isinstance(value, list):  # a bundle's step messages
            shown[key] = f"<{len(value)} messages>"
        else:
            shown[key] = "<omitted>"
    return repr(shown)


def _plain(value: Any) -> bool:
    """None, a scalar, or a list of strings (step names)."""
    if isinstance(value, list):
        return all(isinstance(item, str) for item in value)
    return value is None or isinstance(value, str | int | float | bool)


class StepAMQP(AMQP):  # type: ignore[misc]  # Celery is untyped
    """Celery's message builder, with summaries for ``argsrepr`` and ``kwargsrepr``."""

    def as_task_v2(self, task_id: str, name: str, args: Any = None, kwargs: Any = None,
                   *rest: Any, argsrepr: str | None = None, kwargsrepr: str | None = None,
                   **options: Any) -> Any:
        message = super().as_task_v2(
            task_id, name, args, kwargs, *rest,
            argsrepr=args_summary(args) if argsrepr is None else argsrepr,
            kwargsrepr=kwargs_summary(kwargs) if kwargsrepr is None else kwargsrepr,
            **options)
        tracing.inject(message.headers, args, kwargs)  # the run's traceparent, when tracing
        return message


def result_summary(result: Any) -> str:
    """``<envelope of run ...>`` for a step's returned envelope (as Celery's repr of it)."""
    match = _ENVELOPE_REPR.match(str(result))
    if match:
        return f"<envelope of run {match.group(1)}>"
    return "<omitted: see the results DB>"


class StepEventDispatcher(EventDispatcher):  # type: ignore[misc]  # Celery is untyped
    """Celery's event dispatcher, with a summary for a succeeded task's result."""

    def send(self, type: str, *args: Any, **fields: Any) -> Any:
        if type == "task-succeeded" and "result" in fields:
            fields["result"] = result_summary(fields["result"])
        return super().send(type, *args, **fields)


class StepEvents(Events):  # type: ignore[misc]  # Celery is untyped
    """``app.events`` with :class:`StepEventDispatcher`."""

    dispatcher_cls = "orchestration.worker.publishing:StepEventDispatcher"


class StepRequest(Request):  # type: ignore[misc]  # Celery is untyped
    """A worker's request, shown (``inspect active/reserved/scheduled``) by its summaries.

    Celery's ``inspect active`` lists the real arguments unless asked for ``safe``
    output; here it is always the ``argsrepr``/``kwargsrepr`` :class:`StepAMQP` wrote.
    """

    def info(self, safe: bool = False) -> dict[str, Any]:
        """The request as ``inspect`` shows it: summaries, never the arguments."""
        shown: dict[str, Any] = super().info(safe=True)
        return shown


class StepTask(Task):  # type: ignore[misc]  # Celery is untyped
    """The base of every task of the app: its worker requests are :class:`StepRequest`."""

    Request = "orchestration.worker.publishing:StepRequest"
