"""Per-error policies: ``task(on_error={kind: action})``.

A step names what to do for each kind of failure (:class:`~orchestration.errors.ErrorKind`,
told apart by :func:`~orchestration.errors.error_kind`)::

    @wf.task(retries=1, on_error={"timeout": "retry(3)",
                                  "model_unavailable": "route_to_fallback"})

Actions, written as strings (as a pipeline file's ``errors`` does):

- ``retry(n)``: retry up to ``n`` times for this kind (instead of ``retries=``); for a
  model call's failure, ``ctx.llm`` retries that call;
- ``route_to_fallback``: at once, no retry: the next model of the catalogue's fallback
  chain (0 calls to a model whose breaker is open); with none left, the step's
  ``fallback=`` value, else the step fails;
- ``skip``: the step is recorded ``skipped`` with the reason; dependents receive None,
  as after the loss of a non-critical step;
- ``fail``: the step fails now: no retry, no fallback;
- ``escalate``: the run waits for a person (``orchestrate approve RUN --data JSON``);
  the data delivered becomes the step's output.

The ``error`` entry applies to every failure whose own kind has no entry. A failure
with no entry at all is handled exactly as without ``on_error``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from orchestration.errors import ErrorKind, WorkflowDefinitionError, error_kind

ESCALATION_INPUT = "on_error"  # the name of the input an escalated step waits for
MODEL_CALL_KINDS = frozenset({ErrorKind.TIMEOUT, ErrorKind.MODEL_UNAVAILABLE,
                              ErrorKind.RATE_LIMITED})
_RETRY = re.compile(r"retry\(\s*(\d+)\s*\)")


class Action(StrEnum):
    """What an ``on_error`` entry does (``retry`` carries its count on :class:`ErrorAction`)."""

    RETRY = "retry"
    ROUTE_TO_FALLBACK = "route_to_fallback"
    SKIP = "skip"
    FAIL = "fail"
    ESCALATE = "escalate"


ACTIONS = ("retry(n)", *(action.value for action in Action if action is not Action.RETRY))


@dataclass(frozen=True)
class ErrorAction:
    """One action; ``retries`` is the ``n`` of ``retry(n)``."""

    action: Action
    retries: int = 0

    @property
    def stops(self) -> bool:
        """True when no retry follows a failure this action handles."""
        return self.action is not Action.RETRY

    def __str__(self) -> str:
        return f"retry({self.retries})" if self.action is Action.RETRY else self.action.value


@dataclass(frozen=True)
class ErrorPolicy:
    """A step's ``on_error`` entries, by kind."""

    entries: tuple[tuple[ErrorKind, ErrorAction], ...]

    def entry(self, kind: ErrorKind) -> tuple[ErrorKind, ErrorAction] | None:
        """(the kind whose entry applies, its action): ``kind``'s own, else ``error``'s."""
        found = dict(self.entries)
        for key in (kind, ErrorKind.ERROR):
            if key in found:
                return key, found[key]
        return None

    def for_call(self, kind: ErrorKind) -> ErrorAction | None:
        """The action ``ctx.llm`` applies to a failed model call of ``kind`` (own entry only)."""
        if kind not in MODEL_CALL_KINDS:
            return None
        return dict(self.entries).get(kind)

    def for_exception(self, exc: BaseException) -> tuple[ErrorKind, ErrorAction | None]:
        """The failure's kind, and the action that applies to it (None: the defaults)."""
        kind = error_kind(exc)
        found = self.entry(kind)
        return kind, None if found is None else found[1]

    @property
    def escalates(self) -> bool:
        """True when some entry escalates to a person."""
        return any(action.action is Action.ESCALATE for _, action in self.entries)

    def __str__(self) -> str:
        return ", ".join(f"{kind}: {action}" for kind, action in self.entries)


def describe_policy(kind: ErrorKind | str, action: ErrorAction) -> str:
    """How the trace names a policy that acted: ``"timeout: retry(3)"``."""
    return f"{kind}: {action}"


def parse_action(text: object, where: str, kind: str) -> ErrorAction:
    """``"retry(3)"``, ``"skip"``... as an :class:`ErrorAction` (WorkflowDefinitionError if not)."""
    if isinstance(text, ErrorAction):
        return text
    if isinstance(text, str):
        value = text.strip()
        match = _RETRY.fullmatch(value)
        if match:
            return ErrorAction(Action.RETRY, int(match.group(1)))
        if value in {a.value for a in Action} and value != Action.RETRY:
            return ErrorAction(Action(value))
    hint = ""
    if isinstance(text, str):
        if text.strip().startswith("retry"):
            hint = " (retry takes a whole number >= 0 in parentheses: 'retry(3)')"
        else:
            close = difflib.get_close_matches(text.strip(), list(ACTIONS), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise WorkflowDefinitionError(
        f"{where}: on_error[{kind!r}] = {text!r} is not an action{hint}; "
        f"allowed: {', '.join(ACTIONS)}")


def as_on_error(value: object, where: str, *, is_map: bool = False) -> ErrorPolicy | None:
    """Check ``task(on_error=...)``: a mapping of error kinds to actions."""
    if value is None:
        return None
    if isinstance(value, ErrorPolicy):
        entries = value.entries
    elif isinstance(value, Mapping):
        entries = tuple((_kind(key, where), parse_action(action, where, str(key)))
                        for key, action in value.items())
    else:
        raise WorkflowDefinitionError(
            f"{where}: on_error must be a mapping of error kinds to actions, e.g. "
            f"{{'timeout': 'retry(3)'}}, got {value!r}")
    policy = ErrorPolicy(entries)
    if is_map and policy.escalates:
        kind = next(k for k, a in entries if a.action is Action.ESCALATE)
        raise WorkflowDefinitionError(
            f"{where}: on_error[{str(kind)!r}] = 'escalate' is not supported on a map step "
            "(a person cannot answer for one element); allowed there: "
            f"{', '.join(a for a in ACTIONS if a != Action.ESCALATE)}")
    return policy if entries else None


def _kind(key: object, where: str) -> ErrorKind:
    kinds = [kind.value for kind in ErrorKind]
    if isinstance(key, str) and key in kinds:
        return ErrorKind(key)
    close = difflib.get_close_matches(key, kinds, n=1, cutoff=0.5) \
        if isinstance(key, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise WorkflowDefinitionError(
        f"{where}: on_error has an unknown error kind {key!r}{hint}; "
        f"allowed: {', '.join(kinds)}")
