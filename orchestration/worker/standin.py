"""A stand-in for the step task: one message's worth of work inside another delivery.

A pack runs several runs' messages in one delivery (worker/packs.py); a fork runs one of
its branches, and a join the body after it, in the delivery that got there
(worker/forks.py). Each runs through the step task as its own message would, under a
:class:`StandIn` whose ``request`` is that message: its own claim, attempts, record and
outcome. What Celery would do to a message is done to that one alone, by sending a
message of its own: a broker retry (``Reschedule``, a hand-back while the results DB is
down) sends it again with the countdown; a replacement (a map, a child run) sends the
replacement. Whatever the delivery carrying it does is unchanged: a worker that dies
has that delivery come back, and what was recorded passes its outcome on.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery.app.task import Context
from celery.exceptions import Ignore, Reject, Retry

log = structlog.get_logger("orchestration.worker.standin")


class StandIn:
    """The step task as one message inside another delivery sees it (see the module).

    ``suffix`` names it within the delivery: its task id is ``<delivery's id>.<suffix>``,
    the same when the delivery comes again (its claims are then this message's own).
    ``target``: the task the message is for, when not the delivering one's (a branch).
    ``outer``: the delivery's request, when the stand-in is made on another thread than
    the delivery's (Celery keeps ``task.request`` per thread: elsewhere it is empty).
    """

    def __init__(self, task: Any, suffix: str | int, args: tuple[Any, ...],
                 kwargs: dict[str, Any], target: Any = None, outer: Any = None) -> None:
        self._task = target if target is not None else task
        delivery = outer if outer is not None else task.request
        request = dict(delivery.__dict__)
        outer_id = delivery.id
        request.update(args=args, kwargs=kwargs,
                       id=None if outer_id is None else f"{outer_id}.{suffix}",
                       retries=0, chain=None, chord=None, callbacks=None, errbacks=None,
                       group=None)
        self.request = Context(request)

    def __getattr__(self, name: str) -> Any:  # orchestrator, workflow, step_name, name, app
        return getattr(self._task, name)

    def _own(self, kwargs: dict[str, Any] | None) -> Any:
        """This message on its own (what a delivery of its own would have been)."""
        return self._task.signature_from_request(self.request, kwargs=kwargs)

    def retry(self, *args: Any, countdown: float | None = None,
              kwargs: dict[str, Any] | None = None, throw: bool = True,
              **options: Any) -> BaseException:
        """Send this message again, alone (Celery would re-send the whole delivery)."""
        send(lambda: self._own(kwargs).apply_async(countdown=countdown))
        ignored: BaseException = Ignore()
        if throw:
            raise ignored
        return ignored

    def replace(self, signature: Any) -> None:
        """Send what replaces this message (a map's chord, a child run)."""
        send(signature.apply_async)
        raise Ignore()


def send(publish: Any) -> None:
    """Publish; a broker that refuses has the whole delivery returned to its queue (the
    work already done passes its recorded outcome on when it comes back)."""
    try:
        publish()
    except Exception as exc:
        raise Reject(f"broker refused a message: {type(exc).__name__}: {exc}",
                     requeue=True) from exc


def run_alone(stand_in: StandIn, execute: Any) -> bool:
    """Run a stand-in's message through the step task's body, as its own delivery would.

    False when it could be neither run nor sent on (the broker refused what it had to
    send): the caller returns its whole delivery to the queue. An engine error is
    recorded on its run by the step task, and logged here; the others go on.
    """
    request = stand_in.request
    try:
        execute(stand_in, *request.args, **request.kwargs)
    except (Ignore, Retry):
        pass  # done with, or sent on alone
    except Reject as exc:
        log.warning("a message run inside another delivery could not be sent on; that "
                    "delivery goes back to its queue", task=stand_in.name,
                    task_id=request.id, error=str(exc))
        return False
    except Exception:
        log.exception("a message run inside another delivery failed in the engine",
                      task=stand_in.name, task_id=request.id)
    return True
