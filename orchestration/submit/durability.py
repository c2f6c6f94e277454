"""Resume failed runs, and reconcile runs that stopped making progress.

``resume(run_id)`` re-runs only the failed, skipped and cancelled steps of a failed or
cancelled run, under the same run id: completed steps pass their recorded outputs on
(a claim of a finished step never runs it again) and every earlier attempt stays in the
trace.

``reconcile()`` (also ``orchestrate reconcile`` and the ``orchestration.reconcile``
beat task) finds pending/running runs whose steps made no progress for longer than
``ORCH_RECONCILE_AFTER`` seconds — their messages were lost, e.g. Redis restarted
empty — and re-dispatches them from the results DB. A step that was mid-flight is
delivered again (at least once); a completed one is not re-run; a run is finalised once.
It also expires human waits past their deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from orchestration.core.clock import utcnow
from orchestration.core.redaction import changed_by_redaction, redacted_paths
from orchestration.core.status import RunStatus, StepStatus
from orchestration.define.workflow import Host
from orchestration.errors import InvalidInput, NotResumable
from orchestration.observe.queries import queue_depths
from orchestration.store.recovery import RERUN_STEPS, RESUMABLE
from orchestration.store.versions import VersionWait, VersionWaits, set_run_version
from orchestration.submit.retention import prune_memory, prune_runs
from orchestration.submit.waits import expire_due_waits

if TYPE_CHECKING:
    from orchestration.define.compiling import CompiledWorkflow
    from orchestration.define.workflow import Workflow

log = structlog.get_logger("orchestration.submit.durability")
PRUNE_BATCHES_PER_PASS = 20  # up to 10,000 runs deleted per reconciler pass


@dataclass(frozen=True)
class Reconciled:
    """What one reconciliation pass did."""

    redispatched: list[str]
    failed: list[str]
    waits_expired: int
    memory_pruned: int = 0  # memory rows past their workflow's retention, deleted
    runs_pruned: int = 0  # finished runs past their retention, deleted (with their rows)


def redacted_inputs(inputs: dict[str, Any], recorded: Iterable[str] | None = None) -> list[str]:
    """Inputs whose stored copy is not what was submitted: they must be given again.

    ``recorded``: the names written with the run (whatever changed them, a ``redact=``
    hook too). The stored copies are searched for the redaction marker as well (wholly,
    nested, or in part of a string), which covers runs written before names were recorded.
    """
    marked = {name for name, value in inputs.items() if redacted_paths(value, name)}
    return sorted(marked | (set(recorded or ()) & set(inputs)))


def _describe_redacted(inputs: dict[str, Any], names: list[str]) -> str:
    """``creds (at creds.password), note`` — each input, and where inside it, if nested."""
    parts = []
    for name in names:
        marked = redacted_paths(inputs[name], name)
        paths = [path for path in marked if path != name]
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        parts.append(f"{name} (at {shown})" if paths else name if marked
                     else f"{name} (changed by the workflow's redact= hook)")
    return ", ".join(parts)


def redacted_upstream(orchestrator: Host, run_id: str, compiled: CompiledWorkflow,
                      to_run: Callable[[StepStatus], bool]) -> list[str]:
    """Finished steps whose stored output was redacted and that a step still to run reads.

    Such a step would receive the redacted copy (the real output was never stored).
    ``to_run`` tells, by status, the steps that will run. Only the outputs they read are
    loaded.
    """
    recovery = orchestrator.store.recovery
    statuses = recovery.step_statuses(run_id)
    producer = {bound.spec.output: name for name, bound in compiled.steps.items()}
    read: set[str] = set()
    for name, status in statuses.items():
        bound = compiled.steps.get(name)
        if bound is None or not to_run(status):
            continue
        for source in (*bound.sources.values(), *bound.when_sources.values(),
                       *bound.gathered.values()):
            upstream = producer.get(source)
            if upstream in statuses and statuses[upstream].produced_output:
                read.add(upstream)
    if not read:
        return []
    outputs = recovery.stored_outputs(run_id, sorted(read))
    return sorted(name for name, output in outputs.items() if redacted_paths(output, name))


def check_resume(orchestrator: Host, run_id: str, inputs: Any = None, *,
                 upgrade: bool = False) -> tuple[Workflow, dict[str, Any]]:
    """Everything resume needs, checked before anything changes: (workflow, inputs).

    Raises InvalidInput (bad or missing inputs), RunNotFound, or NotResumable (run not
    failed/cancelled, workflow not defined here, or of another version without
    ``upgrade``, or with other steps), naming the culprit.
    """
    given = _given_inputs(run_id, inputs)
    state = orchestrator.store.recovery.run_state(run_id)
    if state.status not in RESUMABLE:
        raise NotResumable(f"run {run_id} is {state.status}; only failed or cancelled runs "
                           "can be resumed")
    workflow = orchestrator.workflows.get(state.workflow)
    if workflow is None:
        raise NotResumable(f"run {run_id} is of workflow {state.workflow!r}, which this process "
                           f"does not define (import its module or set ORCH_IMPORTS)")
    compiled = workflow.validate()
    if compiled.version != state.version:
        check_upgrade(orchestrator, run_id, state.workflow, state.version, compiled, upgrade)
    unknown = sorted(set(given) - compiled.inputs)
    if unknown:
        raise InvalidInput(f"run {run_id}: unknown input(s) {', '.join(map(repr, unknown))} "
                           f"for workflow {state.workflow!r} (its inputs: "
                           f"{', '.join(sorted(compiled.inputs)) or 'none'})")
    merged = workflow.check_inputs(compiled, {**state.inputs, **given})
    missing = [name for name in redacted_inputs(state.inputs, state.redacted)
               if name not in given]
    if missing:
        example = ", ".join(f'"{name}": ...' for name in missing)
        raise InvalidInput(
            f"run {run_id}: input(s) {_describe_redacted(state.inputs, missing)} were redacted "
            f"when stored (secrets are never stored); give them again: resume(run_id, "
            f"inputs={{...}}) or orchestrate resume {run_id} --inputs '{{{example}}}'")
    lost = redacted_upstream(orchestrator, run_id, compiled,
                             lambda status: status.value in RERUN_STEPS)
    if lost:
        raise NotResumable(f"run {run_id}: the output(s) of step(s) {', '.join(lost)} were "
                           "redacted when stored (secrets are never stored) and the steps to "
                           "re-run read them; submit a new run")
    return workflow, merged


def redacted_loss(orchestrator: Host, run_id: str, name: str, version: str,
                  inputs: dict[str, Any]) -> str | None:
    """Why a run re-dispatched from the results DB would not get what it was submitted.

    Its inputs stored redacted (nested or in part), or finished steps' outputs stored
    redacted that its unfinished steps read. None when a re-dispatch is exact.
    """
    secrets = redacted_inputs(inputs, orchestrator.store.recovery.run_state(run_id).redacted)
    if secrets:
        example = ", ".join(f'"{secret}": ...' for secret in secrets)
        return (f"its input(s) {_describe_redacted(inputs, secrets)} were redacted when "
                f"stored (secrets are never stored); resume it with them: "
                f"orchestrate resume {run_id} --inputs '{{{example}}}'")
    workflow = orchestrator.workflows.get(name)
    if workflow is None or workflow.validate().version != version:
        return None  # not re-dispatched anyway, for that reason
    lost = redacted_upstream(orchestrator, run_id, workflow.validate(),
                             lambda status: not status.is_terminal)
    if lost:
        return (f"the output(s) of step(s) {', '.join(lost)} were redacted when stored "
                "(secrets are never stored) and steps still to run read them; submit a new run")
    return None


def _given_inputs(run_id: str, inputs: Any) -> dict[str, Any]:
    if inputs is None:
        return {}
    if not isinstance(inputs, dict):
        raise InvalidInput(f"run {run_id}: inputs to resume with must be a JSON object of "
                           f"input names to values, got {type(inputs).__name__}")
    bad = [key for key in inputs if not isinstance(key, str)]
    if bad:
        raise InvalidInput(f"run {run_id}: input names must be strings, got {bad[0]!r}")
    return dict(inputs)


def check_upgrade(orchestrator: Host, run_id: str, name: str, started: str,
                  compiled: CompiledWorkflow, upgrade: bool) -> None:
    """Refuse to resume a run of another version, unless ``upgrade`` and the steps match.

    Resuming on this process's version runs the remaining steps with its code: only
    with ``upgrade`` (``orchestrate resume --upgrade``), and only when the steps are the
    same ones (code, signatures and policies may differ). Steps added, removed or
    renamed: refused whatever the flag (the recorded steps would not fit the plan).
    """
    recorded = set(orchestrator.store.recovery.step_statuses(run_id))
    added, removed = sorted(set(compiled.steps) - recorded), sorted(recorded - set(compiled.steps))
    which = (f"run {run_id} started on {name}@{started}; this process carries "
             f"{name}@{compiled.version}")
    if added or removed:
        change = "; ".join(part for part in (
            f"step(s) added: {', '.join(added)}" if added else "",
            f"step(s) removed or renamed: {', '.join(removed)}" if removed else "") if part)
        raise NotResumable(f"{which} ({change}); its recorded steps do not fit this version: "
                           f"resume it from a process carrying {name}@{started}, or submit "
                           "a new run")
    if not upgrade:
        raise NotResumable(f"{which} (same steps; code, signatures or policies changed): "
                           f"resume it from a process carrying {name}@{started}, or pass "
                           f"upgrade=True (orchestrate resume --upgrade) to run its remaining "
                           f"steps on {name}@{compiled.version}")


def resume(orchestrator: Host, run_id: str, inputs: dict[str, Any] | None = None, *,
           upgrade: bool = False) -> str:
    """Continue a failed or cancelled run from its last good steps; returns the run id.

    ``inputs`` replace stored ones: secrets were stored redacted (wholly, nested, or in
    part of a string), so a run that had any needs them given again, or resume refuses.
    The run continues on the version it started with; a process of another version
    refuses unless ``upgrade`` (see :func:`check_upgrade`), which moves the run to this
    process's version. Everything is checked first: on any error nothing changes and
    nothing is enqueued.
    """
    workflow, merged = check_resume(orchestrator, run_id, inputs, upgrade=upgrade)
    store = orchestrator.store
    started, version = store.recovery.run_state(run_id).version, workflow.validate().version
    stored = workflow.redactor(merged)
    if started != version:
        set_run_version(store.engine, run_id, version)
    store.recovery.reset_for_resume(run_id, stored, sorted(changed_by_redaction(merged, stored)))
    workflow.dispatch(run_id, merged, stored=stored)
    log.info("run resumed", run_id=run_id, workflow=workflow.name,
             version=f"{workflow.name}@{version}",
             **({"started_on": f"{workflow.name}@{started}"} if started != version else {}))
    return run_id


def reconcile(orchestrator: Host, *, idle_seconds: float | None = None) -> Reconciled:
    """Re-dispatch runs with no progress for ``idle_seconds``; expire overdue waits.

    A run is left alone while a live worker holds one of its steps (it is running, not
    lost) or while a queue of its workflow holds messages that a live worker consumes (it
    may be waiting its turn). A backlog that no live worker consumes is no progress.
    """

    idle = orchestrator.settings.reconcile_after if idle_seconds is None else idle_seconds
    store = orchestrator.store
    alive_since = utcnow() - timedelta(seconds=orchestrator.settings.worker_dead_after)
    redispatched: list[str] = []
    failed: list[str] = []
    backlogged: dict[str, bool] = {}
    for run_id, name, version, inputs in store.recovery.stale_runs(
            utcnow() - timedelta(seconds=idle)):
        workflow = orchestrator.workflows.get(name)
        if workflow is not None and backlogged.setdefault(
                name, _has_backlog(orchestrator, workflow, alive_since)):
            continue
        if VersionWaits(store.engine, store.reader).has_run(run_id):
            continue  # waits visibly for a worker of its version (ORCH_VERSION_GRACE ends it)
        if not store.workers.release_run(run_id, alive_since):
            log.info("stalled run left alone: a live worker holds one of its steps",
                     run_id=run_id, workflow=name)
            continue
        if redispatch(orchestrator, run_id, name, version, inputs,
                      why=f"made no progress for {idle:g} s"):
            redispatched.append(run_id)
        else:
            failed.append(run_id)
    return Reconciled(redispatched, failed, expire_due_waits(orchestrator),
                      prune_memory(orchestrator), _prune_runs(orchestrator))


def _prune_runs(orchestrator: Host) -> int:
    """A bounded share of retention per pass (a backlog is worked off over passes)."""
    if orchestrator.settings.retention is None and not any(
            workflow.retention is not None for workflow in orchestrator.workflows.values()):
        return 0
    try:
        return len(prune_runs(orchestrator, max_batches=PRUNE_BATCHES_PER_PASS).runs)
    except Exception as exc:  # retention waits for the next pass; reconciling does not
        log.warning("pruning finished runs failed; next pass tries again", error=repr(exc))
        return 0


def redispatch(orchestrator: Host, run_id: str, name: str, version: str,
               inputs: dict[str, Any], *, why: str) -> bool:
    """Send a stalled run's canvas again from the results DB, or fail it if it cannot be.

    Completed steps are not run again (their claims pass the recorded outputs on). A run
    whose workflow is not defined here or changed, or whose inputs were stored redacted,
    ends ``failed`` saying why. True when the run was re-dispatched.
    """
    store = orchestrator.store
    lost = redacted_loss(orchestrator, run_id, name, version, inputs)
    if lost:
        store.finish_run(run_id, RunStatus.FAILED, error_type="Unrecoverable",
                         error=f"{why} and cannot be re-dispatched: {lost}")
        return False
    workflow = orchestrator.workflows.get(name)
    if workflow is None:
        store.finish_run(run_id, RunStatus.FAILED, error_type="Unrecoverable",
                         error=f"{why} and its workflow {name!r} is not defined in this "
                         "process; not re-dispatched")
        return False
    if workflow.validate().version != version:
        # Re-dispatched by a worker carrying its version (worker/versions.py), or failed
        # after ORCH_VERSION_GRACE saying which version it waited for.
        waits = VersionWaits(store.engine, store.reader)
        if not waits.has_run(run_id):
            waits.park(VersionWait(run_id, name, version, "", "", {"redispatch": why},
                                   f"{orchestrator.celery.main} ({name}@"
                                   f"{workflow.validate().version})"), utcnow())
        log.warning("run of another version left for a worker carrying it", run_id=run_id,
                    version=f"{name}@{version}", reason=why)
        return True
    log.warning("re-dispatching a run", run_id=run_id, workflow=name, reason=why)
    workflow.dispatch(run_id, inputs)
    return True


def _has_backlog(orchestrator: Host, workflow: Workflow, alive_since: datetime) -> bool:
    """True when a queue of the workflow holds messages and a live worker consumes it."""

    if orchestrator.settings.embedded:
        return False
    queues = sorted({bound.queue for bound in workflow.validate().steps.values()})
    try:
        depths = queue_depths(orchestrator, queues)
    except Exception:  # the broker cannot say: act as before (re-dispatch is idempotent)
        return False
    waiting = {queue for queue, depth in depths.items() if depth}
    if not waiting:
        return False
    consumed = orchestrator.store.workers.live_queues(alive_since)
    for queue in sorted(waiting - consumed):
        log.warning("a queue holds messages that no live worker consumes", queue=queue,
                    depth=depths[queue], workflow=workflow.name)
    return bool(waiting & consumed)
