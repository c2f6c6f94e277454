"""What starts a run besides ``submit``: triggers on named events, and cron schedules.

These are declarations only, checked when they are made (in Python or by the pipeline
loader): which event (or cron expression) starts which workflow, how the event's payload
becomes the run's inputs, which events are let through, and what makes two deliveries of
one event the same event. The event layer (``orchestration.events``) records events and
starts the runs.

Payload paths are a small, safe subset of JSONPath, never evaluated code::

    $                      the whole payload
    $.ticket.description   a key, then a key
    $.items[0].sku         an index into a list
    $["key.with.dots"]     a key that is not an identifier
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from croniter import croniter

from orchestration.core.envelope import dumps
from orchestration.core.names import identifier, workflow_name
from orchestration.core.priority import DEFAULT, check_priority
from orchestration.errors import InvalidInput, WorkflowDefinitionError

Overlap = Literal["skip", "allow", "queue"]
OVERLAP_POLICIES: tuple[str, ...] = ("skip", "allow", "queue")
_SEGMENT = re.compile(r"""\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[(["'])(.*?)\3\]""")
_EVENT_NAME = re.compile(r"[\w.:-]{1,200}")


class PathNotFound(LookupError):
    """A payload has nothing at a path: ``path`` as written, ``at`` the part that failed."""

    def __init__(self, path: str, at: str, why: str) -> None:
        super().__init__(f"{path}: {why} at {at}")
        self.path, self.at, self.why = path, at, why


@dataclass(frozen=True)
class PayloadPath:
    """A parsed payload path; ``extract`` reads it from a payload."""

    text: str
    parts: tuple[str | int, ...]

    def extract(self, payload: Any) -> Any:
        """The value at this path, or :class:`PathNotFound` naming the part that failed."""
        value, walked = payload, "$"
        for part in self.parts:
            step = f"[{part}]" if isinstance(part, int) else f".{part}"
            if isinstance(part, int):
                if not isinstance(value, list) or part >= len(value):
                    raise PathNotFound(self.text, walked + step,
                                       "no such index" if isinstance(value, list)
                                       else f"not a list ({type(value).__name__})")
                value = value[part]
            else:
                if not isinstance(value, Mapping):
                    raise PathNotFound(self.text, walked + step,
                                       f"not an object ({type(value).__name__})")
                if part not in value:
                    raise PathNotFound(self.text, walked + step, "no such key")
                value = value[part]
            walked += step
        return value


def parse_path(text: object, where: str) -> PayloadPath:
    """Parse ``$``-rooted path ``text``; a bad path is a definition error naming ``where``."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise WorkflowDefinitionError(f"{where}: a payload path starts with '$' "
                                      f"(e.g. '$.ticket.description'), got {text!r}")
    parts: list[str | int] = []
    position = 1
    while position < len(text):
        match = _SEGMENT.match(text, position)
        if match is None:
            raise WorkflowDefinitionError(
                f"{where}: cannot read payload path {text!r} at character {position} "
                f"({text[position:position + 12]!r}); use .key, [index] or [\"key\"]")
        key, index, _, quoted = match.groups()
        parts.append(int(index) if index is not None else (key if key is not None
                                                           else quoted))
        position = match.end()
    return PayloadPath(text, tuple(parts))


def event_name(value: object, where: str) -> str:
    """An event name: letters, digits and ``_ . : -`` (e.g. ``zendesk.ticket.created``)."""
    if not isinstance(value, str) or not _EVENT_NAME.fullmatch(value):
        raise WorkflowDefinitionError(
            f"{where}: an event name is 1-200 letters, digits, '_', '.', ':' or '-', "
            f"got {value!r}")
    return value


@dataclass(frozen=True)
class Trigger:
    """Event ``event`` starts a run of ``workflow``.

    ``inputs`` maps each input of the run to a payload path (``$.ticket.description``);
    ``constants`` are inputs given as they are; ``filter`` maps payload paths to the value
    each must equal (all must, else the event does not match this trigger); ``dedupe`` is
    the payload path of the key that makes two deliveries one event (None: the event id).
    One key starts at most one run of this trigger, whatever the source and however many
    times it is delivered. ``priority``: the runs' (0 normal .. 9 most urgent).
    """

    name: str
    event: str
    workflow: str
    inputs: Mapping[str, PayloadPath] = field(default_factory=dict)
    constants: Mapping[str, Any] = field(default_factory=dict)
    filter: Mapping[PayloadPath, Any] = field(default_factory=dict)
    dedupe: PayloadPath | None = None
    priority: int = DEFAULT

    def matches(self, payload: Any) -> bool:
        """True when every ``filter`` path holds its value (a missing path: no match)."""
        for path, expected in self.filter.items():
            try:
                if path.extract(payload) != expected:
                    return False
            except PathNotFound:
                return False
        return True

    def run_inputs(self, payload: Any) -> dict[str, Any]:
        """The run's inputs from a payload; :class:`PathNotFound` names the failing path."""
        values = dict(self.constants)
        for input_name, path in self.inputs.items():
            values[input_name] = path.extract(payload)
        return values

    def dedupe_key(self, event_id: str, payload: Any) -> str:
        """What makes deliveries the same event: the dedupe path's value, else the id."""
        if self.dedupe is None:
            return event_id
        value = self.dedupe.extract(payload)
        return value if isinstance(value, str) else dumps(value)


@dataclass(frozen=True)
class Schedule:
    """A cron expression starts runs of ``workflow`` with ``inputs`` (UTC).

    ``overlap`` says what a tick does while the previous run of this schedule is still
    going: ``skip`` it (recorded), ``allow`` another run, or ``queue`` it until the
    previous one finishes. Each tick starts at most one run, however many beat
    processes run. ``priority``: the runs' (0 normal .. 9 most urgent).
    """

    name: str
    cron: str
    workflow: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    overlap: Overlap = "skip"
    priority: int = DEFAULT


def make_trigger(name: object, *, event: object, workflow: object,
                 inputs: Mapping[str, Any] | None = None,
                 filter: Mapping[str, Any] | None = None,
                 dedupe: object = None, priority: object = None,
                 where: str | None = None) -> Trigger:
    """A checked :class:`Trigger`; values of ``inputs`` starting with ``$`` are paths."""
    where = where or f"trigger {name!r}"
    trigger_name = identifier(name, "trigger name", where)
    paths: dict[str, PayloadPath] = {}
    constants: dict[str, Any] = {}
    for input_name, source in (inputs or {}).items():
        identifier(input_name, "input name", f"{where}, inputs")
        if isinstance(source, str) and source.startswith("$"):
            paths[input_name] = parse_path(source, f"{where}, inputs.{input_name}")
        else:
            _check_json(source, f"{where}, inputs.{input_name}")
            constants[input_name] = source
    conditions: dict[PayloadPath, Any] = {}
    for path, expected in (filter or {}).items():
        _check_json(expected, f"{where}, filter {path!r}")
        conditions[parse_path(path, f"{where}, filter")] = expected
    level = _priority(priority, where)
    return Trigger(
        name=trigger_name, event=event_name(event, f"{where}, event"),
        workflow=workflow_name(workflow), inputs=paths, constants=constants,
        filter=conditions,
        dedupe=None if dedupe is None else parse_path(dedupe, f"{where}, dedupe"),
        priority=level)


def make_schedule(name: object, *, cron: object, workflow: object,
                  inputs: Mapping[str, Any] | None = None, overlap: object = "skip",
                  priority: object = None, where: str | None = None) -> Schedule:
    """A checked :class:`Schedule` (the cron expression is parsed by croniter)."""
    where = where or f"schedule {name!r}"
    schedule_name = identifier(name, "schedule name", where)
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise WorkflowDefinitionError(f"{where}: cron must be a cron expression like "
                                      f"'*/5 * * * *', got {cron!r}")
    if overlap not in OVERLAP_POLICIES:
        raise WorkflowDefinitionError(f"{where}: overlap must be one of "
                                      f"{', '.join(OVERLAP_POLICIES)}, got {overlap!r}")
    values = dict(inputs or {})
    for input_name, value in values.items():
        identifier(input_name, "input name", f"{where}, inputs")
        _check_json(value, f"{where}, inputs.{input_name}")
    return Schedule(name=schedule_name, cron=cron, workflow=workflow_name(workflow),
                    inputs=values, overlap=overlap,  # type: ignore[arg-type]
                    priority=_priority(priority, where))


def _priority(value: object, where: str) -> int:
    """A declared priority: checked as a run's, a definition error when bad."""
    try:
        return check_priority(value, where)
    except InvalidInput as exc:
        raise WorkflowDefinitionError(str(exc)) from None


def check_mapped(workflow: str, what: str, name: str, mapped: set[str],
                 declared: frozenset[str] | None, reserved: frozenset[str]) -> None:
    """Inputs a trigger or schedule gives must be declared ones (when declared)."""
    taken = sorted(mapped & reserved)
    if taken:
        raise WorkflowDefinitionError(f"workflow {workflow!r}, {what} {name!r}: "
                                      f"{taken[0]!r} is reserved, not an input")
    if declared is not None:
        unknown = sorted(mapped - declared)
        if unknown:
            raise WorkflowDefinitionError(
                f"workflow {workflow!r}, {what} {name!r}: maps unknown input(s) "
                f"{', '.join(unknown)} (declared: {', '.join(sorted(declared)) or 'none'})")


def check_starters(workflow: str, triggers: tuple[Trigger, ...], schedules: tuple[Schedule, ...],
                   inputs: frozenset[str], required: frozenset[str]) -> None:
    """Each trigger and schedule gives only inputs the workflow takes, and all it needs."""
    starters: list[tuple[str, str, set[str]]] = [
        ("trigger", t.name, set(t.inputs) | set(t.constants)) for t in triggers]
    starters += [("schedule", s.name, set(s.inputs)) for s in schedules]
    for what, name, mapped in starters:
        where = f"workflow {workflow!r}, {what} {name!r}"
        unknown = sorted(mapped - inputs)
        if unknown:
            raise WorkflowDefinitionError(
                f"{where}: maps {', '.join(unknown)}, which the workflow does not take "
                f"(its inputs: {', '.join(sorted(inputs)) or 'none'})")
        missing = sorted(required - mapped)
        if missing:
            raise WorkflowDefinitionError(
                f"{where}: gives no value for required input(s) {', '.join(missing)}")


def default_name(workflow: str, verb: str, event: str) -> str:
    """``<workflow>_<verb>_<event>`` made an identifier (dots and dashes become ``_``)."""
    text = re.sub(r"\W", "_", "_".join(part for part in (workflow, verb, event) if part))
    return text if not text[0].isdigit() else f"w_{text}"


def _check_json(value: Any, where: str) -> None:
    try:
        dumps(value)
    except (TypeError, ValueError) as exc:
        raise WorkflowDefinitionError(f"{where}: must be JSON, got {value!r} ({exc})") from None
