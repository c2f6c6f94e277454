"""Runs in flight across a deployment: a step runs only on a worker of its run's version.

Every step message carries its run's workflow version (``version`` in its kwargs, set
by the compiler). A worker whose definition of the workflow compiles to another version
never runs the step with its own code: it parks the message in the results DB
(``version_waits``) and acknowledges it. Each worker advertises the versions it carries
in its heartbeat row and consumes, beside each step queue ``q`` it serves, the queue
``q@<workflow>@<version>`` of its own version; its heartbeat takes the messages parked
for that version and sends them there, where only carriers of the version read them.
No message bounces between workers: a message is parked once per wrong delivery and
sent on only to a queue its version's carriers consume. Past ``ORCH_VERSION_GRACE``
with no live carrier, a parked message's run is failed saying which version it waited
for (docs/upgrades.md).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from orchestration.core.clock import utcnow
from orchestration.core.envelope import Envelope, is_envelope
from orchestration.core.status import RunStatus, StepStatus
from orchestration.define.workflow import Host, Workflow
from orchestration.store.repository import StepOutcome
from orchestration.store.versions import VersionWait, VersionWaits
from orchestration.submit.durability import redispatch
from orchestration.worker.engine_tasks import resume_signature

if TYPE_CHECKING:
    from orchestration.store.repository import Store

log = structlog.get_logger("orchestration.worker.versions")
_UNFINISHED = (RunStatus.PENDING.value, RunStatus.RUNNING.value)
SEPARATOR = "@"
_ROUTING = ("queue", "exchange", "routing_key", "redelivered")


def version_queue(queue: str, workflow: str, version: str) -> str:
    """The queue of one version's messages of a step queue: ``q@<workflow>@<version>``."""
    return f"{queue}{SEPARATOR}{workflow}{SEPARATOR}{version}"


def version_waits(store: Store) -> VersionWaits:
    """The version queries of a store."""
    return VersionWaits(store.engine, store.reader)


def carried(workflows: Iterable[Workflow]) -> dict[str, str]:
    """{workflow: version} this process carries (workflows that compile)."""
    versions: dict[str, str] = {}
    for workflow in workflows:
        try:
            versions[workflow.name] = workflow.validate().version
        except Exception:  # a workflow that does not compile carries no version
            continue
    return versions


def version_queues(workflows: Iterable[Workflow], consumed: Collection[str]) -> list[str]:
    """The version queues a worker consuming ``consumed`` reads for its own versions."""
    names = set()
    for workflow in workflows:
        try:
            compiled = workflow.validate()
        except Exception:
            continue
        for bound in compiled.steps.values():
            if bound.queue in consumed:
                names.add(version_queue(bound.queue, workflow.name, compiled.version))
    return sorted(names)


def stamp(signature: Any, workflow: str, version: str) -> Any:
    """``signature`` with every step message of ``workflow`` in it naming ``version``.

    For canvases a worker builds mid-run (a map's chunks): they run the run's steps too.
    """
    parts = signature if isinstance(signature, list | tuple) else getattr(
        signature, "tasks", None)
    if parts is not None:
        for part in parts:
            stamp(part, workflow, version)
        body = getattr(signature, "body", None)
        if body is not None:
            stamp(body, workflow, version)
    elif str(getattr(signature, "task", "")).startswith(f"{workflow}."):
        signature.kwargs["version"] = version
    return signature


def park(host: Host, task: Any, workflow: Workflow, version: str, message: Any) -> None:
    """Park a step message of a run of ``version`` this worker does not carry."""
    request = task.request
    run_id = (request.kwargs or {}).get("run_id") or (
        Envelope.from_message(message).run_id if is_envelope(message) else None)
    if not isinstance(run_id, str):
        raise ValueError(f"step message {request.id} names no run")
    mine = workflow.validate()
    step = task.step_name
    bound = mine.steps.get(step)
    queue = bound.queue if bound is not None else str(
        (request.delivery_info or {}).get("routing_key") or "")
    stored = workflow.redactor(resume_signature(task))  # secrets are never stored
    version_waits(host.store).park(VersionWait(
        run_id, workflow.name, version, step, queue.split(SEPARATOR)[0], stored,
        f"{request.hostname} ({workflow.name}@{mine.version})"), utcnow())
    log.warning("step of another workflow version parked until a worker carrying it takes "
                "it", run_id=run_id, step=step, run_version=f"{workflow.name}@{version}",
                worker_version=f"{workflow.name}@{mine.version}")


def park_unknown(celery: Any, message: Any) -> bool:
    """Park a message of a step this worker does not define, sent by a run of another version.

    A step removed or renamed in this worker's version is no task here: Celery would drop
    its message. When its workflow is defined here and the message names another
    version, it is parked like any message of another version. False otherwise (Celery's
    handling follows).
    """
    headers = message.headers or {}
    name = str(headers.get("task") or "")
    prefix = name.partition(".")[0]
    owner = next((task for task in list(celery.tasks.values())
                  if getattr(getattr(task, "workflow", None), "name", None) == prefix), None)
    if owner is None:
        return False
    args, kwargs, embed = message.decode()
    workflow: Workflow = owner.workflow
    version = kwargs.get("version")
    mine = workflow.validate().version
    run_id = kwargs.get("run_id") or (
        Envelope.from_message(args[0]).run_id if args and is_envelope(args[0]) else None)
    if not isinstance(version, str) or version == mine or not isinstance(run_id, str):
        return False
    options = {"task_id": headers.get("id"), "root_id": headers.get("root_id"),
               "parent_id": headers.get("parent_id"), "group_id": headers.get("group"),
               "group_index": headers.get("group_index"), "chord": embed.get("chord"),
               "chain": embed.get("chain"), "link": embed.get("callbacks"),
               "link_error": embed.get("errbacks"),
               "ignore_result": bool(headers.get("ignore_result")),
               "priority": (message.properties or {}).get("priority")}
    queue = str((message.delivery_info or {}).get("routing_key") or "").split(SEPARATOR)[0]
    signature = {"task": name, "args": list(args), "kwargs": kwargs, "immutable": False,
                 "subtask_type": None,
                 "options": {key: value for key, value in options.items() if value is not None}}
    step = name.partition(".")[2]
    owner.orchestrator.store  # noqa: B018 - opened (and migrated) before the write
    version_waits(owner.orchestrator.store).park(VersionWait(
        run_id, workflow.name, version, step, queue, workflow.redactor(signature),
        f"{owner.orchestrator.hostname} ({workflow.name}@{mine}, no step {step!r})"),
        utcnow())
    log.warning("step unknown to this worker's version parked until a worker carrying its "
                "run's version takes it", run_id=run_id, step=step,
                run_version=f"{workflow.name}@{version}",
                worker_version=f"{workflow.name}@{mine}")
    return True


def sweep(host: Host, consumed: Collection[str]) -> tuple[int, int]:
    """One heartbeat's share: send on parked messages of carried versions; fail expired.

    Returns (sent on, runs failed).
    """
    waits = version_waits(host.store)
    mine = carried(host.workflows.values())
    sent = 0
    if host.settings.embedded:  # its queues are this process's own: no other version reads them
        queues = set(consumed)
    else:
        queues = {queue for queue in consumed if SEPARATOR not in queue and any(
            version_queue(queue, name, version) in consumed for name, version in mine.items())}
    for wait in waits.take(mine, queues):
        target = wait.queue if host.settings.embedded else version_queue(
            wait.queue, wait.workflow, wait.version)
        try:
            if not wait.step:  # a stalled run to re-dispatch: this worker carries its version
                state = host.store.recovery.run_state(wait.run_id)
                if state.status in _UNFINISHED:
                    redispatch(host, wait.run_id, wait.workflow, wait.version, state.inputs,
                               why=str(wait.message.get("redispatch") or "stalled"))
            else:
                send(host, wait.message, target)
            sent += 1
        except Exception:  # the broker refused: parked again, the next beat tries again
            log.exception("could not send on a parked step; parked again", run_id=wait.run_id)
            waits.park(wait, wait.created_at or utcnow())
    return sent, _fail_expired(host, waits)


def send(host: Host, message: Mapping[str, Any], queue: str) -> None:
    """Send a parked step message to ``queue`` (its chain, chord and id unchanged)."""
    signature = dict(message)
    options = {key: value for key, value in dict(signature.get("options") or {}).items()
               if key not in _ROUTING}
    signature["options"] = {**options, "queue": queue}
    host.celery.signature(signature).apply_async()


def _fail_expired(host: Host, waits: VersionWaits) -> int:
    grace = host.settings.version_grace
    now = utcnow()
    before = now - timedelta(seconds=grace)
    if not waits.any_expired(before):  # the common case: one indexed query per beat
        return 0
    # A version a live worker carries is not failed: that worker takes its messages.
    carriers = waits.carriers(now - timedelta(seconds=host.settings.worker_dead_after))
    failed = 0
    for wait in waits.expired(before, carriers):
        others = sorted(carriers.get(wait.workflow, set()))
        error = (f"waited {grace:g} s (ORCH_VERSION_GRACE) for a worker carrying "
                 f"{wait.workflow}@{wait.version}, the version the run started with; live "
                 "workers carry " + (", ".join(f"{wait.workflow}@{v}" for v in others)
                                     if others else "no version of it")
                 + "; resume it with --upgrade to run its remaining steps on the current "
                 "version, or deploy a worker of its version")
        store = host.store
        if wait.step:
            store.record_step(wait.run_id, wait.step, StepOutcome(
                StepStatus.FAILED, error=error, error_type="VersionUnavailable"))
        if store.finish_run(wait.run_id, RunStatus.FAILED, error=error,
                            error_type="VersionUnavailable"):
            failed += 1
            log.error("run failed: no worker carries its workflow version", run_id=wait.run_id,
                      version=f"{wait.workflow}@{wait.version}", waited_s=grace)
    return failed


def waiting_reason(store: Store, run_id: str) -> list[str]:
    """What ``orchestrate show`` says of a run's parked messages."""
    return [f"{f'step {wait.step}' if wait.step else 'the run (to re-dispatch)'} waits for a "
            f"worker carrying {wait.workflow}@{wait.version} (parked by {wait.parked_by} "
            f"at {wait.created_at:%Y-%m-%d %H:%M:%S} UTC)"
            for wait in version_waits(store).of_run(run_id)]


def version_summary(store: Store, alive_since: datetime) -> list[str]:
    """What ``orchestrate workers`` says of versions: carried by live workers, and waiting."""
    waits = version_waits(store)
    lines = [f"carried: {name}@{version}" for name, versions in
             sorted(waits.carriers(alive_since).items()) for version in sorted(versions)]
    lines += [f"waiting: {count} step message(s) of {name}@{version} since "
              f"{oldest:%Y-%m-%d %H:%M:%S} UTC (no worker of this version took them yet)"
              for name, version, count, oldest in waits.waiting()]
    return lines
