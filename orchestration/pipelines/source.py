"""Reading a pipeline file: JSON or YAML, with the line of every JSON pointer.

YAML nodes carry marks, so each value's line is known; a JSON file is also read as YAML
(JSON is YAML's flow style) only to learn its lines. Problems a parser alone can see
(a syntax error, a key given twice, a key that is not text) are collected with their
pointer and line rather than raised one at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestration.errors import Problem

JSON_SUFFIXES = (".json",)
YAML_SUFFIXES = (".yaml", ".yml")
SUFFIXES = JSON_SUFFIXES + YAML_SUFFIXES


def pointer(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901) from its parts: ``pointer("steps", "a/b")`` is
    ``/steps/a~1b``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


@dataclass
class Source:
    """A parsed pipeline file: its data, the line of each pointer, parse problems."""

    path: Path
    text: str
    data: Any = None
    lines: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line(self, at: str) -> int | None:
        """The line of ``at``, or of its nearest parent that has one."""
        while True:
            if at in self.lines:
                return self.lines[at]
            if not at:
                return None
            at = at.rsplit("/", 1)[0]

    def problem(self, at: str, message: str) -> Problem:
        """A problem at pointer ``at``, with its line when known."""
        return Problem(at, message, self.line(at))


def read(path: Path) -> Source:
    """Read and parse ``path`` (``.json``, ``.yaml`` or ``.yml``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        source = Source(path, "")
        source.problems.append(Problem("", f"cannot read the file: {exc}"))
        return source
    source = Source(path, text)
    if path.suffix.lower() in JSON_SUFFIXES:
        _parse_json(source)
    else:
        _parse_yaml(source)
    return source


def _parse_json(source: Source) -> None:
    try:
        source.data = json.loads(source.text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        source.problems.append(Problem("", f"not valid JSON: {exc.msg} (column {exc.colno})",
                                       exc.lineno))
        return
    except ValueError as exc:  # NaN / Infinity: Python reads them, JSON has no such value
        source.problems.append(Problem("", f"not valid JSON: {exc}"))
        return
    try:  # lines only: the JSON parser's data is the file's meaning
        node = yaml.compose(source.text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return
    if node is not None:
        _walk(source, node, "", data_keys=True)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _parse_yaml(source: Source) -> None:
    loader = yaml.SafeLoader(source.text)
    try:
        node = loader.get_single_node()
        if node is None:
            source.problems.append(Problem("", "the file is empty"))
            return
        _walk(source, node, "", data_keys=False)
        source.data = _plain(loader.construct_document(node))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(exc, "problem", None) or str(exc)
        source.problems.append(Problem("", f"not valid YAML: {what}", line))
    finally:
        loader.dispose()


def _walk(source: Source, node: yaml.Node, at: str, *, data_keys: bool) -> None:
    """Record the line of every value; report keys given twice and keys not text."""
    source.lines.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key_node.tag != "tag:yaml.org,2002:str":
                key = _key(_KEYS.construct_object(key_node))  # as the data holds it
            here = at + pointer(key)
            if not data_keys and key_node.tag != "tag:yaml.org,2002:str":
                source.problems.append(Problem(
                    here, f"the key {key_node.value!r} is read as "
                    f"{key_node.tag.rsplit(':', 1)[-1]}, not text; quote it",
                    key_node.start_mark.line + 1))
            if key in seen:
                source.problems.append(Problem(
                    here, f"the key {key!r} is given twice (the last one would win)",
                    key_node.start_mark.line + 1))
            seen.add(key)
            source.lines[here] = key_node.start_mark.line + 1
            _walk(source, value_node, here, data_keys=data_keys)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(source, item, f"{at}/{index}", data_keys=data_keys)
    elif not data_keys and (node.tag in _NOT_JSON or (
            node.tag == "tag:yaml.org,2002:float" and "n" in node.value.lower())):
        source.problems.append(Problem(
            at, f"{node.value!r} is read as {node.tag.rsplit(':', 1)[-1]}, which is not "
            "JSON; quote it", node.start_mark.line + 1))


_KEYS = yaml.constructor.SafeConstructor()
_NOT_JSON = frozenset({"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary",
                       "tag:yaml.org,2002:set"})


def _plain(value: Any) -> Any:
    """YAML's data as JSON's: keys as text (reported above when they were not)."""
    if isinstance(value, dict):
        return {_key(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    return str(value)  # a date or bytes (reported above): text, so nothing else breaks


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    return json.dumps(key) if isinstance(key, bool | int | float) or key is None else str(key)
