"""The Celery settings the engine runs with, chosen for long, failure-prone model calls.

Each setting says why it is set; anything not here is Celery's default.
"""

from __future__ import annotations

from typing import Any

from orchestration.core.priority import DEFAULT, HIGHEST, message_priority
from orchestration.core.settings import Settings

#: Celery's Redis result backend without run data in task keys. A string: Celery imports it.
STEP_REDIS_BACKEND = "orchestration.worker.result_backend:StepRedisBackend"

#: Workers ride out a Redis restart of a few minutes (see ``worker_overrides``).
BACKEND_RETRY_POLICY = {"max_retries": 60, "interval_start": 0, "interval_step": 1,
                        "interval_max": 5}
BACKEND_STORE_RETRIES = 60
#: A submitting client gives up within seconds: its caller gets the error (and nothing
#: was created, see Workflow.submit) instead of a call that hangs for minutes.
CLIENT_BACKEND_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5,
                               "interval_max": 1}
CLIENT_BACKEND_STORE_RETRIES = 2


def result_backend(settings: Settings) -> str:
    """The result backend URL: a Redis one selects the step tasks' Redis backend."""
    url = settings.effective_result_backend
    if url.startswith(("redis://", "rediss://")):
        return f"{STEP_REDIS_BACKEND}+{url}"
    return url


def worker_overrides(settings: Settings) -> dict[str, Any]:
    """What a ``celery worker`` process sets on top of :func:`celery_config`.

    Reconnecting to the Redis result backend (chord counters, the result consumer) is
    retried for ~5 min (0, 1, ... 5 s apart), not Celery's ~20 s after which a worker logs
    "Retry limit exceeded ... must be restarted" and stays broken: a broker/backend
    restart of a few minutes is ridden out. Storing a result retries connection errors
    too (~4 min: exponential backoff capped at 10 s) instead of failing the step's
    bookkeeping at the first one.
    """
    if settings.embedded:
        return {}
    return {
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout,
                                             "retry_policy": BACKEND_RETRY_POLICY},
        "result_backend_max_retries": BACKEND_STORE_RETRIES,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        # Chord bookkeeping only; on Redis, task keys keep a summary of a step's result,
        # never its values (worker/result_backend.py).
        "result_backend": result_backend(settings),
        # JSON only: a pickle payload from the broker would be code execution on a worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Acknowledge after the step finishes, so a worker killed mid-step has its
        # message re-delivered rather than lost (steps are idempotent per run+step).
        "task_acks_late": True,
        # A step whose worker process died is re-queued, not failed: the next delivery
        # resumes it from the results DB.
        "task_reject_on_worker_lost": True,
        # One message at a time per process: model calls are long, and prefetching
        # would park work behind a slow call while other workers sit idle.
        "worker_prefetch_multiplier": 1,
        # Flower (and the events monitor) need task events; also send the 'sent' event
        # so queued-but-not-started steps are visible.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Results are only chord bookkeeping (run state lives in the results DB). A step's
        # task key holds a summary; the values a join needs sit in the chord's parts set,
        # deleted at the join (worker/result_backend.py). This expiry bounds a
        # chord that never joins (its message lost, its run re-dispatched), and must
        # outlive the longest chord, waits for a person inside it included.
        "result_expires": 24 * 3600,
        "result_extended": False,
        # Redis re-delivers unacknowledged messages after this long: it must exceed the
        # longest step including retries, or a slow step would run twice concurrently.
        # kombu's Redis transport emulates priorities with one list per step, popped in
        # ascending order: ten steps give each run priority its own list
        # (``queue``, ``queue:1`` ... ``queue:9``; see core/priority.py).
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout,
                                     "priority_steps": list(range(HIGHEST + 1)),
                                     "sep": ":"},
        # Run priorities (core/priority.py): RabbitMQ queues are declared with
        # x-max-priority (a queue declared earlier without it must be deleted once:
        # RabbitMQ refuses to re-declare it); every message a step publishes (the next
        # step of a chain, map chunks, a child run) keeps its run's priority; a message
        # sent without one is a normal run's.
        "task_queue_max_priority": HIGHEST,
        "task_inherit_parent_priority": True,
        "task_default_priority": message_priority(DEFAULT, settings.broker_url),
        "result_backend_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            # A client (submit) gives up reconnecting within seconds; workers get the
            # long policy below (worker_overrides).
            "retry_policy": CLIENT_BACKEND_RETRY_POLICY,
        },
        "result_backend_always_retry": True,
        "result_backend_max_retries": CLIENT_BACKEND_STORE_RETRIES,
        # A pooled backend connection idle for 10 s is pinged before use, so the dead
        # sockets of a restarted server are replaced instead of failing a command.
        "redis_backend_health_check_interval": 10,
        "redis_retry_on_timeout": True,
        "redis_socket_connect_timeout": 5,
        # One backend connection per worker process shared by its threads, instead of
        # one per thread/greenlet.
        "result_backend_thread_safe": True,
        "task_default_queue": settings.default_queue,
        # Queues are declared by the router as steps name them; workers pick theirs with -Q.
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        # A malformed task message (a body that is not [args, kwargs, embed], no id) is
        # rejected with an error log; Celery's own consumer would exit on it, and the
        # unacknowledged message would then kill every worker that receives it.
        "worker_consumer": "orchestration.worker.messages:GuardedConsumer",
        "broker_connection_retry_on_startup": True,
        "imports": list(settings.imports),
        # Chord callbacks on Redis are counted with INCR: no polling `chord_unlock` task.
        "result_chord_join_timeout": 30.0,
        # `celery -A orchestration beat`: re-dispatch runs whose messages were lost and
        # expire overdue human waits.
        "beat_schedule": {
            "orchestration-reconcile": {"task": "orchestration.reconcile", "schedule": 60.0},
        },
    }
    if settings.embedded:
        # The in-process broker polls its queues; the default 1 s would add a second to
        # every hop of a run.
        config["broker_transport_options"] = {"polling_interval": 0.005}
        config["result_backend_transport_options"] = {}
    return config
