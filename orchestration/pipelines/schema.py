"""The published JSON Schema of pipeline files, and its problems as pointers and lines.

``pipeline.schema.json`` (draft 2020-12, shipped in this package) is the one contract:
the loader validates every file against it, editors complete and check with it
(``orchestrate pipeline schema > pipeline.schema.json``; in YAML, a
``# yaml-language-server: $schema=...`` comment), and every property says what it means.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from orchestration.errors import Problem
from orchestration.pipelines.source import Source, pointer

SCHEMA_FILE = Path(__file__).with_name("pipeline.schema.json")


@functools.cache
def schema() -> dict[str, Any]:
    """The pipeline file schema (parsed once)."""
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return loaded


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


def schema_problems(source: Source) -> list[Problem]:
    """Every place where ``source``'s data breaks the schema, in file order."""
    problems: list[Problem] = []
    for error in _validator().iter_errors(source.data):
        for at, message in _explain(error):
            problems.append(source.problem(at, message))
    return sorted(problems, key=lambda p: (p.line or 0, p.pointer))


def check_json_schema(value: Any) -> str | None:
    """None when ``value`` is a valid JSON Schema (draft 2020-12), else why not."""
    try:
        Draft202012Validator.check_schema(value)
    except Exception as exc:  # SchemaError, or a bad $ref / regex inside it
        return f"not a valid JSON Schema: {getattr(exc, 'message', exc)}"
    return None


def _explain(error: ValidationError) -> Iterator[tuple[str, str]]:
    """(pointer, message) for one schema error, worded for a person editing the file."""
    at = pointer(*error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        for key in sorted(set(error.instance) - set(allowed)):
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            yield at + pointer(key), f"unknown option {key!r}{hint}; allowed: {', '.join(allowed)}"
        return
    if "propertyNames" in error.schema_path:
        # Raised inside propertyNames: the instance is the key, the path its object's.
        name = error.instance
        yield at + pointer(str(name)), f"the name {name!r} is not allowed here: " + (
            f"must be one of {', '.join(map(str, error.validator_value))}"
            if kind == "enum" else
            "names are Python identifiers (letters, digits, '_', not starting with a digit)"
            if kind == "pattern" else str(error.message))
        return
    if kind == "required":
        yield at, f"missing {error.message.split(' is a required')[0]}"
        return
    if kind == "oneOf" and error.context:
        # The branch of the instance's own type says what is wrong with it.
        relevant = [e for e in error.context if e.validator != "type"] or error.context
        for inner in (best_match(relevant),):
            yield from _explain(inner)
        return
    yield at, _message(error)


def _message(error: ValidationError) -> str:
    kind = error.validator
    if kind == "pattern":
        expected = error.schema.get("description") or error.validator_value
        return f"{error.instance!r} does not have the expected form ({expected})"
    if kind == "enum":
        return f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    return str(error.message)
