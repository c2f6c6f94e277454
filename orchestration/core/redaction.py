"""Secrets never reach the results DB or the logs.

Values under deny-listed field names (``api_key``, ``authorization``, ``password`` ... plus
``ORCH_REDACT_FIELDS``) are replaced by ``[REDACTED]`` wherever they are nested, and
strings are scrubbed of bearer tokens and provider key shapes. A workflow's ``redact=``
hook can scrub more (e.g. PII) from what is stored of its runs. Redaction applies to what
is *stored and logged*: inputs, outputs, errors and log lines. Values still travel
unredacted inside broker messages to the steps that need them. A value that redaction
changed never travels by reference, whatever its size (a reference is read back from the
stored, redacted copy): it stays inline. A run re-dispatched from the results DB (resume,
the reconciler) cannot get such values back: :func:`redacted_paths` finds where the
stored copy lost something, and the run refuses to continue until they are given again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

REDACTED = "[REDACTED]"
DEFAULT_FIELDS = frozenset({
    "api_key", "apikey", "api-key", "x-api-key", "authorization", "password", "passwd",
    "secret", "client_secret", "token", "access_token", "refresh_token", "private_key",
})
_PATTERNS = (
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\bsk-(?:ant-)?[A-Za-z0-9_-]{12,}"),
    re.compile(r"(?i)\b(api[_-]?key|x-api-key|password|secret|token)\s*[=:]\s*[^\s,;'\"]{6,}"),
)

_PLAIN = frozenset({int, float, bool, type(None)})  # nothing to scrub in these


class Redactor:
    """Scrubs values before they are stored or logged."""

    def __init__(self, fields: Iterable[str] = (),
                 hook: Callable[[Any], Any] | None = None) -> None:
        self.fields = DEFAULT_FIELDS | {field.lower() for field in fields}
        self.hook = hook

    def __call__(self, value: Any) -> Any:
        """A redacted copy of ``value`` (dicts, lists and strings, recursively)."""
        if self.hook is not None:
            value = self.hook(value)
        return self._scrub(value)

    def text(self, value: str | None) -> str | None:
        """A redacted copy of a string (e.g. an error message)."""
        return None if value is None else self._scrub_text(value)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: REDACTED if isinstance(key, str) and key.lower() in self.fields
                    else item if type(item) in _PLAIN else self._scrub(item)
                    for key, item in value.items()}
        if isinstance(value, list | tuple):
            # A map's outputs are often 10,000 numbers: no call per number.
            return [item if type(item) in _PLAIN else self._scrub(item) for item in value]
        if isinstance(value, str):
            return self._scrub_text(value)
        return value

    @staticmethod
    def _scrub_text(text: str) -> str:
        for pattern in _PATTERNS:
            text = pattern.sub(REDACTED, text)
        return text


def redacted_paths(value: Any, path: str) -> list[str]:
    """Where a stored value holds the redaction marker, e.g. ``creds.password``, ``notes[2]``.

    Nested values and strings redacted in part (``use [REDACTED] now``) count too.
    Iterative, so a deeply nested value cannot exhaust the stack.
    """
    found: list[str] = []
    pending: list[tuple[str, Any]] = [(path, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str):
            if REDACTED in item:
                found.append(where)
        elif isinstance(item, Mapping):
            pending.extend((f"{where}.{key}", child) for key, child in item.items())
        elif isinstance(item, list | tuple):
            pending.extend((f"{where}[{index}]", child) for index, child in enumerate(item))
    return sorted(found)


def changed_by_redaction(values: Mapping[str, Any], stored: Any) -> frozenset[str]:
    """Names whose stored (redacted) copy differs from the value: never pass them by reference."""
    if not isinstance(stored, Mapping):  # a redact= hook reshaped the whole mapping
        return frozenset(values)
    missing = object()
    return frozenset(name for name, value in values.items()
                     if _differs(value, stored.get(name, missing)))


def _differs(value: Any, kept: Any) -> bool:
    if kept == value:
        return False
    try:  # a tuple stored as a list, say, is the same JSON: not a change
        return _canonical(value) != _canonical(kept)
    except (TypeError, ValueError):
        return True


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def structlog_processor(
    redactor: Redactor,
) -> Callable[[Any, str, MutableMapping[str, Any]], Mapping[str, Any]]:
    """A structlog processor that redacts every field of every log line."""

    def process(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        return {key: REDACTED if key.lower() in redactor.fields else redactor._scrub(value)
                for key, value in event.items()}

    return process
