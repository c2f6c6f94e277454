"""Prompt templates: ``{{ name }}`` and ``{{ name.field }}`` placeholders, nothing else.

A template is text with placeholders; each names a pipeline input or a step's output,
optionally followed by fields (``classify_ticket.label``) or list indexes
(``items.0``). Nothing is evaluated: there are no expressions, filters or calls. Every
name is checked when the pipeline loads (see the loader); a value is rendered as itself
when it is text, as compact JSON otherwise, and as nothing when it is null (a
non-critical step that failed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
_PATH = re.compile(r"[A-Za-z_]\w*(?:\.(?:[A-Za-z_]\w*|\d+))*")


class TemplateSyntaxError(ValueError):
    """A template that cannot be read; ``column`` is where (1-based, in the text)."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class Placeholder:
    """One ``{{ ... }}``: the name it reads, the fields after it, where it starts."""

    root: str
    fields: tuple[str, ...]
    column: int

    @property
    def text(self) -> str:
        """As written, without braces and spaces: ``classify_ticket.label``."""
        return ".".join((self.root, *self.fields))


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and placeholders, in order."""

    source: str
    parts: tuple[str | Placeholder, ...]

    @property
    def placeholders(self) -> tuple[Placeholder, ...]:
        """The placeholders, in order."""
        return tuple(part for part in self.parts if isinstance(part, Placeholder))

    @property
    def names(self) -> tuple[str, ...]:
        """The names the template reads (each once, in order of first use)."""
        return tuple(dict.fromkeys(p.root for p in self.placeholders))

    def render(self, values: Mapping[str, Any]) -> str:
        """The text with every placeholder replaced by its value."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(as_text(lookup(values[part.root], part.fields, part.text)))
        return "".join(out)


def parse(source: str) -> Template:
    """Parse ``source``; :class:`TemplateSyntaxError` says what is wrong and where."""
    parts: list[str | Placeholder] = []
    position = 0
    for match in _PLACEHOLDER.finditer(source):
        literal = source[position:match.start()]
        _check_literal(literal, position)
        if literal:
            parts.append(literal)
        inner = match.group(1).strip()
        column = match.start() + 1
        if not inner:
            raise TemplateSyntaxError(f"empty placeholder '{{{{}}}}' at column {column}",
                                      column)
        if not _PATH.fullmatch(inner):
            raise TemplateSyntaxError(
                f"placeholder {{{{ {inner} }}}} at column {column} is not a name or "
                "name.field (no expressions: only inputs and outputs can be named)", column)
        root, *fields = inner.split(".")
        parts.append(Placeholder(root, tuple(fields), column))
        position = match.end()
    _check_literal(source[position:], position)
    if source[position:]:
        parts.append(source[position:])
    return Template(source, tuple(parts))


def lookup(value: Any, fields: tuple[str, ...], text: str) -> Any:
    """``value`` followed along ``fields``; KeyError naming ``text`` if one is missing."""
    for field in fields:
        if isinstance(value, Mapping) and field in value:
            value = value[field]
        elif isinstance(value, list) and field.isdigit() and int(field) < len(value):
            value = value[int(field)]
        else:
            raise KeyError(f"{{{{ {text} }}}}: the value has no {field!r} "
                           f"(it is {type(value).__name__})")
    return value


def as_text(value: Any) -> str:
    """How a value appears in a prompt: text as is, null as nothing, the rest as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _check_literal(literal: str, offset: int) -> None:
    for token, what in (("{{", "an unclosed '{{'"), ("}}", "a '}}' without '{{'")):
        index = literal.find(token)
        if index >= 0:
            column = offset + index + 1
            raise TemplateSyntaxError(f"{what} at column {column}", column)
