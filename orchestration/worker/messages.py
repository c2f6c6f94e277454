"""The worker's guard against malformed task messages: reject them, never die of them.

Celery's consumer unpacks a task message in the worker's main thread, outside every
error handler of a task: a protocol-2 body that is not ``[args, kwargs, embed]``
(``{"a": 1}``, ``[1, 2, 3, 4, 5]``, ``null``), a missing ``id`` header or a malformed
``timelimit`` raises there and the worker exits (or its consumer restarts in a loop);
the message was never acknowledged, so it is delivered again and the next worker dies
the same way. :class:`GuardedConsumer` (``worker_consumer`` in ``config/celery.py``)
checks every message's headers and body shape before Celery touches them, for every
task (steps, the engine's own tasks, Celery's built-ins, unknown names), in every pool
and in the embedded worker. A malformed message is logged at ERROR with its task name
and id and rejected without requeue: dead-lettered where the broker has a dead-letter
exchange, dropped otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog
from celery import signals
from celery.exceptions import InvalidTaskError
from celery.utils.log import get_logger
from celery.worker.consumer import Consumer

from orchestration.worker.versions import park_unknown

log = structlog.get_logger("orchestration.worker.messages")
_celery_log = get_logger(__name__)

#: What Celery's protocol 2 puts in the third element of a task body.
EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})
_ID_HEADERS = ("root_id", "parent_id", "group", "shadow")


def header_problem(headers: Any) -> str | None:
    """Why these headers cannot be a protocol-2 task message's, or None."""
    if not isinstance(headers, Mapping):
        return f"headers are {type(headers).__name__}, not a mapping"
    task, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task, str) or not task:
        return "no 'task' header (only Celery protocol 2 messages are accepted)"
    if not isinstance(task_id, str) or not task_id:
        return f"'id' header is {_kind(task_id)}, not a task id"
    for name in _ID_HEADERS:
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"{name!r} header is {_kind(headers[name])}, not a string"
    limits = headers.get("timelimit")
    if limits is not None and not (
            isinstance(limits, list | tuple) and len(limits) == 2
            and all(_is_seconds(limit) for limit in limits)):
        return "'timelimit' header is not [hard, soft] seconds"
    retries = headers.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool)
                                or retries < 0):
        return f"'retries' header is {_kind(retries)}, not a count"
    return None


def body_problem(body: Any) -> str | None:
    """Why a decoded task body is not ``[args, kwargs, embed]`` of protocol 2, or None."""
    if not isinstance(body, list | tuple) or len(body) != 3:
        size = f" of {len(body)}" if isinstance(body, list | tuple) else ""
        return f"body is {type(body).__name__}{size}, not [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return f"args are {_kind(args)}, not a list"
    if not isinstance(kwargs, dict):
        return f"kwargs are {_kind(kwargs)}, not an object"
    if not isinstance(embed, dict):
        return f"embed is {_kind(embed)}, not an object"
    unknown = sorted(set(embed) - EMBED_KEYS)
    if unknown:
        return f"embed has unknown keys {unknown}"
    for key in ("callbacks", "errbacks", "chain"):
        value = embed.get(key)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(sig, dict) for sig in value)):
            return f"embed {key!r} is {_kind(value)}, not a list of signatures"
    chord = embed.get("chord")
    if chord is not None and not isinstance(chord, dict):
        return f"embed 'chord' is {_kind(chord)}, not a signature"
    return None


def message_problem(message: Any) -> str | None:
    """Why a received message cannot be handed to Celery's strategy, or None."""
    problem = header_problem(message.headers)
    if problem is not None:
        return problem
    try:
        body = message.decode()
    except Exception as exc:  # not JSON, a refused content type (pickle), bad encoding
        return f"body cannot be decoded ({message.content_type}): {type(exc).__name__}: {exc}"
    return body_problem(body)


def _is_seconds(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                             and value >= 0)


def _kind(value: Any) -> str:
    return "missing" if value is None else type(value).__name__


class GuardedConsumer(Consumer):  # type: ignore[misc]  # celery is untyped
    """Celery's consumer, rejecting malformed task messages before its strategies see them."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Celery's task handler behind the message check."""
        handle: Callable[[Any], Any] = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            problem = message_problem(message)
            if problem is not None:
                return self.reject_malformed(message, problem)
            return handle(message)

        return on_task_received

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A step this worker's workflow version lacks is parked for its run's version."""
        try:
            parked = park_unknown(self.app, message)
        except Exception:  # e.g. the results DB down: back to the queue, not dropped
            log.exception("could not park a step unknown to this worker's version",
                          task=_printable((message.headers or {}).get("task")))
            message.reject_log_error(_celery_log, self.connection_errors, requeue=True)
            return
        if parked:
            message.ack()
            return
        super().on_unknown_task(body, message, exc)

    def reject_malformed(self, message: Any, problem: str) -> None:
        """Log a malformed message (never its body: it may hold secrets) and reject it."""
        headers = message.headers if isinstance(message.headers, Mapping) else {}
        delivery = message.delivery_info or {}
        log.error("malformed task message rejected", task=_printable(headers.get("task")),
                  task_id=_printable(headers.get("id")), problem=problem,
                  queue=delivery.get("routing_key"))
        message.reject_log_error(_celery_log, self.connection_errors, requeue=False)
        signals.task_rejected.send(sender=self, message=message,
                                   exc=InvalidTaskError(problem))


def _printable(value: Any) -> str | None:
    return None if value is None else str(value)[:200]
