"""What Celery shows of a step message: a summary naming the run, never its data.

Celery puts ``saferepr(args)`` and ``saferepr(kwargs)`` of every task message into the
message headers and its ``task-sent``/``task-received`` events, which Flower shows and
keeps, and its own log lines. A step's argument is the run's envelope: inputs and
outputs, including values the redaction rules keep out of the results DB and the logs.
:class:`StepAMQP` (the Celery app's message builder) replaces both reprs with a summary:
the run id and the delivery's plain options (``fused``, ``chunk`` position and size...).
It also saves the cost of ``saferepr`` on every publish, client and worker side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery.app.amqp import AMQP

# Plain values that help an operator and carry no run data.
_SHOWN = ("run_id", "step", "fused", "finalize", "total", "workflow", "count")


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
        if key in _SHOWN and (value is None or (isinstance(value, str | int | float | bool | list)
                              and (not isinstance(value, list)
                                   or all(isinstance(v, str) for v in value)))):
            shown[key] = value
        elif key == "chunk" and isinstance(value, Mapping):
            items = value.get("items")
            shown[key] = {"start": value.get("start"),
                          "items": len(items) if isinstance(items, list) else "<ref>"}
        else:
            shown[key] = "<omitted>"
    return repr(shown)


class StepAMQP(AMQP):  # type: ignore[misc]  # Celery is untyped
    """Celery's message builder, with summaries for ``argsrepr`` and ``kwargsrepr``."""

    def as_task_v2(self, task_id: str, name: str, args: Any = None, kwargs: Any = None,
                   *rest: Any, argsrepr: str | None = None, kwargsrepr: str | None = None,
                   **options: Any) -> Any:
        return super().as_task_v2(
            task_id, name, args, kwargs, *rest,
            argsrepr=args_summary(args) if argsrepr is None else argsrepr,
            kwargsrepr=kwargs_summary(kwargs) if kwargsrepr is None else kwargsrepr,
            **options)
