"""What a declared step runs: plain callable objects whose parameters are named at load.

The engine binds a step's parameters by name (inputs and upstream outputs), reading
them from the callable's signature; a declared step has no Python function, so each
object here carries a ``__signature__`` built from what its file says it reads. They
hold no code from the file: a prompt is a template, a condition a comparison.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema

from orchestration.core import choices as closed_set
from orchestration.core.envelope import dumps
from orchestration.errors import InvalidModelOutput, NonRetryableError
from orchestration.pipelines.template import Template, as_text, lookup

CTX = "ctx"


class ModelServices(Protocol):
    """What a model step uses of ``ctx.llm`` (the execute floor's ``StepContext`` has it)."""

    def complete(self, prompt: Any, *, model: str | None = None, **params: Any) -> Any:
        """A completion (with ``.text``)."""

    def complete_json(self, prompt: Any, *, schema: Any, model: str | None = None,
                      attempts: int = 3, **params: Any) -> Any:
        """A parsed, validated JSON answer."""


def signature(names: Sequence[str], *, ctx: bool) -> inspect.Signature:
    """Keyword parameters ``names`` (and ``ctx`` last if asked): how the step binds."""
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY)
              for name in dict.fromkeys(names) if name != CTX]
    if ctx:
        params.append(inspect.Parameter(CTX, inspect.Parameter.KEYWORD_ONLY))
    return inspect.Signature(params)


class _Declared:
    """Base of the callables below: a signature of its own, a readable name."""

    __signature__: inspect.Signature
    __name__: str

    def _bind(self, name: str, names: Sequence[str], *, ctx: bool) -> None:
        self.__signature__ = signature(names, ctx=ctx)
        self.__name__ = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.__name__}>"


class ModelCall(_Declared):
    """A model step: render the prompt, ask the model, check the answer.

    With ``output_schema`` the answer is parsed and validated like
    ``ctx.llm.complete_json``; with ``choices`` it must name one choice (normalised;
    anything else raises :class:`InvalidModelOutput`, kind ``invalid_output``).
    """

    def __init__(self, name: str, *, prompt: Template | None, system: Template | None,
                 reads: Sequence[str], output_schema: Any = None,
                 choices: Sequence[str] | None = None, json_attempts: int = 3) -> None:
        self._bind(name, reads, ctx=True)
        self.prompt, self.system = prompt, system
        self.reads = tuple(reads)
        self.output_schema = output_schema
        self.choices = tuple(choices) if choices else None
        self.json_attempts = json_attempts

    def messages(self, values: Mapping[str, Any]) -> list[dict[str, str]]:
        """The chat messages for these values (system first, then the user's)."""
        system = self.system.render(values) if self.system is not None else ""
        if self.choices:
            system = "\n".join(part for part in (system, closed_set.instruction(self.choices))
                               if part)
        user = self.prompt.render(values) if self.prompt is not None else _inputs_text(
            {name: values[name] for name in self.reads})
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}]

    def __call__(self, *, ctx: Any, **values: Any) -> Any:
        llm: ModelServices = ctx.llm
        messages = self.messages(values)
        if self.output_schema is not None:
            return llm.complete_json(messages, schema=self.output_schema,
                                     attempts=self.json_attempts)
        text = str(llm.complete(messages).text)
        if self.choices is None:
            return text
        chosen = closed_set.normalise(text, self.choices)
        if chosen is None:
            raise InvalidModelOutput(f"the answer {text[:200]!r} is none of the choices "
                                     f"{', '.join(self.choices)}")
        return chosen


def _inputs_text(values: Mapping[str, Any]) -> str:
    """A prompt-less model step's message: the one input, or ``name: value`` lines."""
    if len(values) == 1:
        return as_text(next(iter(values.values())))
    return "\n".join(f"{name}: {as_text(value)}" for name, value in values.items())


@dataclass(frozen=True)
class Route:
    """Where a routing value goes: a step of this pipeline, or a workflow as a child run."""

    target: str
    is_step: bool


class Router(_Declared):
    """A routing step: pick the table's target for the value routed on.

    A step target needs nothing done here (the target's own condition selects it); the
    output says what was chosen. A workflow target is started as a child run with the
    inputs it takes, and the step's output is the child's outputs. A value with no entry
    and no default fails the step (not retried) naming the value and the table.
    """

    def __init__(self, name: str, *, table: Mapping[str, Route], default: Route | None,
                 route_on: str, reads: Sequence[str],
                 find: Callable[[str], Any], child_inputs: Mapping[str, Sequence[str]]) -> None:
        self._bind(name, reads, ctx=True)
        self.table, self.default = dict(table), default
        self.root, *fields = route_on.split(".")
        self.fields, self.route_on = tuple(fields), route_on
        self.find = find  # a workflow by name, from the deployment (at run time)
        self.child_inputs = {target: tuple(names) for target, names in child_inputs.items()}

    def route(self, value: Any) -> tuple[str, Route]:
        """(the table key, the route) for a value; NonRetryableError if there is none."""
        key = route_key(value)
        route = self.table.get(key, self.default)
        if route is None:
            raise NonRetryableError(
                f"routing step {self.__name__!r}: the value {key!r} of {self.route_on!r} has "
                f"no entry in its routing table ({', '.join(map(repr, self.table))}) and the "
                "table has no default")
        return key, route

    def __call__(self, *, ctx: Any, **values: Any) -> Any:
        key, route = self.route(lookup(values[self.root], self.fields, self.route_on))
        if route.is_step:
            return {"value": key, "selected": route.target}
        inputs = {name: values[name] for name in self.child_inputs.get(route.target, ())}
        workflow = self.find(route.target)
        if workflow is None:
            raise NonRetryableError(
                f"routing step {self.__name__!r}: workflow {route.target!r} (for the value "
                f"{key!r}) is not known in this process; workers must import its module "
                "(ORCH_IMPORTS) or load its pipeline (ORCH_PIPELINES)")
        return ctx.run_child(workflow, **inputs)


def route_key(value: Any) -> str:
    """A routed value as a table key: text stripped, anything else as its JSON."""
    return value.strip() if isinstance(value, str) else dumps(value)


class Selected(_Declared):
    """The condition of a step a routing table targets: the routed value maps to it."""

    def __init__(self, name: str, *, router: Router, target: str) -> None:
        self._bind(name, [router.root], ctx=False)
        self.router, self.target = router, target

    def __call__(self, **values: Any) -> bool:
        try:
            _, route = self.router.route(lookup(values[self.router.root], self.router.fields,
                                                self.router.route_on))
        except (NonRetryableError, KeyError):
            return False  # the routing step itself fails and says why
        return route.is_step and route.target == self.target


class Condition(_Declared):
    """A declared ``when``: one comparison of an input or output with JSON values."""

    OPERATORS = ("equals", "not_equals", "in", "not_in")

    def __init__(self, name: str, *, output: str, operator: str, operand: Any) -> None:
        self.root, *fields = output.split(".")
        self.fields, self.output = tuple(fields), output
        self._bind(name, [self.root], ctx=False)
        self.operator, self.operand = operator, operand

    def __call__(self, **values: Any) -> bool:
        try:
            value = lookup(values[self.root], self.fields, self.output)
        except KeyError:
            return False  # a missing field satisfies no comparison
        if self.operator == "equals":
            return bool(value == self.operand)
        if self.operator == "not_equals":
            return bool(value != self.operand)
        if self.operator == "in":
            return value in self.operand
        return value not in self.operand


class OutputGate(_Declared):
    """A declared gate: a JSON Schema, a minimum and/or maximum length."""

    def __init__(self, name: str, *, schema: Any = None, min_length: int | None = None,
                 max_length: int | None = None) -> None:
        self.__name__ = name
        self.schema, self.min_length, self.max_length = schema, min_length, max_length

    def __call__(self, output: Any) -> str | None:
        if self.schema is not None:
            try:
                jsonschema.validate(output, self.schema)
            except jsonschema.ValidationError as exc:
                where = "/".join(map(str, exc.absolute_path)) or "output"
                return f"{where}: {exc.message}"
        if self.min_length is not None or self.max_length is not None:
            if not isinstance(output, str | list | dict):
                return f"a length gate needs text, a list or an object, got {type(output).__name__}"
            size = len(output)
            if self.min_length is not None and size < self.min_length:
                return f"length {size} is under the minimum {self.min_length}"
            if self.max_length is not None and size > self.max_length:
                return f"length {size} is over the maximum {self.max_length}"
        return None
