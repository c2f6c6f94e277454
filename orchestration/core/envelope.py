"""The message that flows between the steps of a run.

Each step task receives the envelope of its predecessor (or a list of envelopes from a
chord header), adds its own output, and passes it on. Small values travel inline;
values over the inline limit travel by reference and are read from the results DB by
the steps that need them, so a large output crosses the broker zero times. The results DB
holds a redacted copy: a value that redaction changed always travels inline, since a
reference to it would be read back redacted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchestration.core.redaction import changed_by_redaction

INPUT_SOURCE = "$input"
OUTPUT_SOURCE = "$output"  # a step output read back by its output name
MAX_JSON_DEPTH = 100  # nesting levels of an input; json and redaction recurse per level


def dumps(value: Any) -> str:
    """Canonical JSON (what size limits and cache keys are computed on).

    Raises ValueError for what a results database cannot store: NaN/Infinity, and NUL
    characters (PostgreSQL's JSON types reject ``\\u0000``).
    """
    # allow_nan=False: NaN/Infinity are not JSON, and PostgreSQL's JSON types reject them.
    try:
        encoded = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                             allow_nan=False)
    except RecursionError:
        raise ValueError("nested too deeply to encode as JSON") from None
    if "\\u0000" in encoded:
        raise ValueError("NUL characters (\\x00) cannot be stored")
    return encoded


def check_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise ValueError, naming the path, for what JSON would not keep as given.

    ``dumps`` cannot see these: dict keys that are not strings (``json`` silently turns
    ``1`` and ``None`` into ``"1"`` and ``"null"``), and nesting deeper than ``max_depth``
    (a RecursionError in ``json`` and in the redactor, or a value that contains itself).
    Iterative, so a deep value cannot exhaust the stack here.
    """
    stack: list[tuple[Any, tuple[Any, ...], int]] = [(value, (), 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[tuple[Any, Any]] = item.items()
        elif isinstance(item, list | tuple):
            children = enumerate(item)
        else:
            continue
        if depth >= max_depth:
            raise ValueError(f"at {_path(path)}: nested deeper than {max_depth} levels "
                             "(or it contains itself)")
        for key, child in children:
            if isinstance(item, dict) and not isinstance(key, str):
                raise ValueError(f"at {_path(path)}: key {key!r} is a {type(key).__name__}; "
                                 "JSON object keys are strings")
            stack.append((child, (path, key), depth + 1))


def _path(path: tuple[Any, ...]) -> str:
    keys: list[Any] = []
    while path:
        path, key = path
        keys.append(key)
    return "".join(f"[{key!r}]" for key in reversed(keys)) or "the top level"


class Envelope:
    """Outputs known so far in one branch of a run, and which are unavailable."""

    __slots__ = ("blocked", "failed", "inline", "pinned", "refs", "run_id", "started",
                 "unselected")

    def __init__(
        self,
        run_id: str,
        inline: dict[str, Any] | None = None,
        refs: dict[str, str] | None = None,
        blocked: set[str] | None = None,
        failed: set[str] | None = None,
    ) -> None:
        self.run_id = run_id
        self.inline: dict[str, Any] = inline or {}
        self.refs: dict[str, str] = refs or {}  # output name -> step name (or INPUT_SOURCE)
        self.blocked: set[str] = blocked or set()  # outputs lost to a critical failure
        self.failed: set[str] = failed or set()  # steps that failed critically
        self.started = False  # some step on this path already moved the run to running
        self.unselected: set[str] = set()  # outputs of steps a branch did not select
        # Inline values whose stored copy differs (redacted): never turn them into refs.
        # Known only to the process that found it out; not part of the message.
        self.pinned: set[str] = set()

    @classmethod
    def for_inputs(cls, run_id: str, inputs: Mapping[str, Any], limit: int, *,
                   stored: Callable[[], Any] | None = None) -> Envelope:
        """The first envelope of a run: its inputs, large ones by reference.

        ``stored()`` is the copy of the inputs the results DB holds (redacted); a large
        input whose stored copy differs stays inline. It is called only when some input
        is over the limit. Without it the stored copy is taken to equal ``inputs``.
        """
        envelope = cls(run_id)
        changed: frozenset[str] | None = None
        for name, value in inputs.items():
            if _fits(value, limit):
                envelope.inline[name] = value
                continue
            if changed is None:
                changed = (changed_by_redaction(inputs, stored()) if stored is not None
                           else frozenset())
            if name in changed:
                envelope.inline[name] = value
            else:
                envelope.refs[name] = INPUT_SOURCE
        return envelope

    def put(self, name: str, value: Any, *, source: str, limit: int,
            keep_inline: bool = False) -> None:
        """Add an output, inline when its JSON is within ``limit`` bytes.

        ``keep_inline``: the stored copy differs from ``value`` (it was redacted), so a
        reference would not give it back; it travels inline whatever its size.
        """
        if keep_inline or _fits(value, limit):
            self.inline[name] = value
        else:
            self.refs[name] = source

    def has(self, name: str) -> bool:
        """True when the output is available (inline or by reference)."""
        return name in self.inline or name in self.refs

    def to_message(self) -> dict[str, Any]:
        """The JSON-ready form sent to the next step."""
        message: dict[str, Any] = {"run": self.run_id, "out": self.inline}
        if self.refs:
            message["ref"] = self.refs
        if self.blocked:
            message["blocked"] = sorted(self.blocked)
        if self.failed:
            message["failed"] = sorted(self.failed)
        if self.started:
            message["started"] = True
        if self.unselected:
            message["unselected"] = sorted(self.unselected)
        return message

    def unselect(self, name: str) -> None:
        """Mark an output as not selected by a branch: dependents see None for it."""
        self.unselected.add(name)
        self.inline[name] = None

    @classmethod
    def from_message(cls, message: Any) -> Envelope:
        """Rebuild from what a task received: one envelope, or a (nested) list from a chord."""
        parts = list(_flatten(message))
        if not parts:
            raise ValueError("a step received no envelope")
        first = parts[0]
        envelope = cls(
            first["run"], dict(first.get("out", {})), dict(first.get("ref", {})),
            set(first.get("blocked", ())), set(first.get("failed", ())),
        )
        envelope.started = bool(first.get("started"))
        envelope.unselected = set(first.get("unselected", ()))
        for part in parts[1:]:
            if part["run"] != envelope.run_id:
                raise ValueError(f"envelopes of two runs merged: {envelope.run_id}, {part['run']}")
            envelope.inline.update(part.get("out", {}))
            envelope.refs.update(part.get("ref", {}))
            envelope.blocked.update(part.get("blocked", ()))
            envelope.failed.update(part.get("failed", ()))
            envelope.started = envelope.started or bool(part.get("started"))
            envelope.unselected.update(part.get("unselected", ()))
        return envelope


def _fits(value: Any, limit: int) -> bool:
    """True when a value travels inline: a scalar, or JSON within ``limit`` bytes."""
    if value is None or isinstance(value, bool | int | float):
        return True
    return len(dumps(value).encode()) <= limit


def is_envelope(message: Any) -> bool:
    """True for what a step task can receive: an envelope or a (nested) list of them."""
    try:
        parts = list(_flatten(message))
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the stack
        return False
    return bool(parts) and all(isinstance(p.get("run"), str)
                               and isinstance(p.get("out", {}), dict) for p in parts)


def _flatten(message: Any) -> Iterable[dict[str, Any]]:
    if isinstance(message, dict):
        yield message
    elif isinstance(message, list | tuple):
        for item in message:
            yield from _flatten(item)
    else:
        raise ValueError(f"not an envelope: {type(message).__name__}")
