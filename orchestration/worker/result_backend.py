"""The Redis result backend of step tasks: chord bookkeeping without a copy of run data.

A step returns its run's envelope (inputs and outputs, secrets included: steps need
them); a chord's join needs the envelopes of its header parts. Celery's Redis backend
keeps each returned value twice: in the task's ``celery-task-meta-<id>`` key, for
``result_expires`` (a day by default), and in the chord's own parts set
(``celery-taskset-meta-<group>.j``), deleted once the chord joins. Only the second is
read: the join takes the parts from it, except for a "complex" header (a chain ending
in a group inside a group), whose join Celery reads from every part's task key.

:class:`StepRedisBackend` keeps the second copy only:

- the task key of a step (or an engine task) holds a summary of its result
  (``<envelope of run ...>``, as Flower gets), never its values;
- no complex header is saved, so every join reads its parts from the chord's set. The
  body then receives the parts as one flat list, which a step's envelope merge reads
  like the nested one (:meth:`orchestration.core.envelope.Envelope.from_message`);
- a chord whose join failed has its parts set deleted too, rather than kept until it
  expires (Celery deletes it after a join that succeeded).
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.canvas import maybe_signature

from orchestration.worker.publishing import StepTask, result_summary

_NESTING_LIMIT = 64  # canvases nest far less; a bound, not a guess at the shape


def stored_result(result: Any, state: str) -> Any:
    """What a task key keeps of a result: a summary for a success, the rest as is.

    Failures keep Celery's exception (type and message) so ``AsyncResult`` can raise it.
    """
    if state == states.SUCCESS and result is not None:
        return result_summary(result)
    return result


class StepRedisBackend(RedisBackend):  # type: ignore[misc]  # Celery is untyped
    """Celery's Redis result backend that keeps no run data in task keys (see module)."""

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        kept = stored_result(result, state) if self._is_engine_task(request) else result
        super()._store_result(task_id, kept, state, traceback, request, **kwargs)
        return result

    def _is_engine_task(self, request: Any) -> bool:
        """True for a task of an orchestrator's app (a step or an engine task).

        Other apps may share this backend class through ``celery_config`` (the raw Celery
        baseline of the bench reads its results back): their results are kept whole.
        """
        return self._is_engine_task_name(getattr(request, "task", None))

    def _is_engine_task_name(self, name: Any) -> bool:
        return isinstance(name, str) and isinstance(self.app.tasks.get(name), StepTask)

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        """For an engine chord, save nothing: its join reads the parts from its own set."""
        if not self._is_engine_task_name(_first_task(body)):
            super().apply_chord(header_result_args, body, **kwargs)

    def on_chord_part_return(self, request: Any, state: str, result: Any,
                             propagate: Any = None, **kwargs: Any) -> None:
        """Record a header part; drop the chord's parts if its join ran and failed."""
        super().on_chord_part_return(request, state, result, propagate=propagate, **kwargs)
        group = getattr(request, "group", None)
        if not group:
            return
        # A join that ran holds the claim (.c); a join that failed dropped the chord's size
        # (.s) but kept its parts (.j) until they expire. (Before the join, .s can be
        # missing too: Celery sets it after sending the header's first tasks.)
        claim, size, parts = (self.get_key_for_group(group, suffix)
                              for suffix in (".c", ".s", ".j"))
        with self.client.pipeline() as pipe:
            joined, sized = pipe.exists(claim).exists(size).execute()
        if joined and not sized:
            self.client.delete(parts, self.get_key_for_group(group, ".t"),
                               self.get_key_for_group(group, ".d"))


def _first_task(signature: Any) -> Any:
    """The name of the first task of a chord body (of a chain, a group or a nested chord).

    A body built in another process arrives as dicts: a group's or chain's ``tasks`` may
    then be a single signature (a dict) rather than a sequence of them.
    """
    for _ in range(_NESTING_LIMIT):
        if signature is None:
            return None
        signature = maybe_signature(signature)
        tasks = getattr(signature, "tasks", None)
        if not tasks:
            break
        signature = tasks if isinstance(tasks, dict) else next(iter(tasks), None)
    return signature.get("task") if isinstance(signature, dict) else None
