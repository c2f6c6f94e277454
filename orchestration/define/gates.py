"""Quality gates: a check over a step's output; a failing gate is a failed attempt.

``task(gate=...)`` takes a callable returning True/None (pass), False or a reason
string (fail), or a pydantic model class the output must validate against. A failed
gate raises :class:`GateFailed`, so the step's retries and fallback apply, and the
verdict is recorded on the attempt and the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestration.errors import WorkflowDefinitionError

PASSED = "passed"


class Gate:
    """A check over a step's output."""

    def __init__(self, check: Callable[[Any], Any] | type[BaseModel], where: str) -> None:
        if isinstance(check, type) and issubclass(check, BaseModel):
            self._model: type[BaseModel] | None = check
            self._check: Callable[[Any], Any] | None = None
        elif callable(check):
            self._model, self._check = None, check
        else:
            raise WorkflowDefinitionError(
                f"{where}: gate must be a callable or a pydantic model class, got {check!r}")
        self.name = getattr(check, "__name__", type(check).__name__)

    def verdict(self, output: Any) -> str | None:
        """None when the output passes, else the reason it fails."""
        if self._model is not None:
            try:
                self._model.model_validate(output)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first.get("loc", ())) or "output"
                return f"{self.name}: {where}: {first.get('msg', 'invalid')}"
            return None
        assert self._check is not None
        result = self._check(output)
        if result is True or result is None:
            return None
        if result is False:
            return f"{self.name} rejected the output"
        return str(result)

    def __repr__(self) -> str:
        return f"Gate({self.name})"
