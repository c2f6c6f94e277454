"""Answers asked for as JSON: found in a model's text, validated, and asked again if wrong."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import jsonschema
from pydantic import BaseModel, ValidationError

from orchestration.errors import InvalidModelOutput

if TYPE_CHECKING:
    from orchestration.llm.providers.base import Completion, Messages

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def asked(prompt: str | Messages) -> Messages:
    """The prompt as chat messages."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class JSONAsk:
    """A conversation asking for JSON: an answer that fails is sent back with the reason."""

    def __init__(self, prompt: str | Messages, schema: type[BaseModel] | dict[str, Any]) -> None:
        self.messages = asked(prompt)
        self.schema = schema
        self.reason = "no answer"

    def check(self, completion: Completion) -> tuple[bool, Any]:
        """(True, the value) if the answer is valid; else (False, None), asking again."""
        try:
            return True, _validate(extract_json(completion.text), self.schema)
        except (ValueError, ValidationError, jsonschema.ValidationError) as exc:
            self.reason = _short(exc)
        self.messages = [*self.messages, {"role": "assistant", "content": completion.text},
                         {"role": "user", "content": f"That answer is not valid: "
                                                     f"{self.reason}. Reply with the JSON only."}]
        return False, None

    def failed(self, attempts: int) -> InvalidModelOutput:
        return InvalidModelOutput(f"no valid JSON after {attempts} call(s): {self.reason}")


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: bare, in markdown fences, or inside prose."""
    stripped = text.strip()
    candidates = [stripped, *(match.strip() for match in _FENCE.findall(text))]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for index, char in enumerate(text):
        if char in "{[":
            try:
                return decoder.raw_decode(text, index)[0]
            except ValueError:
                continue
    raise ValueError("no JSON value found in the answer")


def _validate(value: Any, schema: type[BaseModel] | dict[str, Any]) -> Any:
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_validate(value)
    jsonschema.validate(value, schema)
    return value


def _short(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ())) or 'value'}: {first['msg']}"
    if isinstance(exc, jsonschema.ValidationError):
        return str(exc.message)
    return str(exc)


