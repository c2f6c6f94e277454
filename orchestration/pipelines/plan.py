"""From a pipeline document to step declarations: every semantic check, all problems.

The schema has said the document is well formed where it could; this reads what the
schema cannot: which names exist (inputs, step outputs, steps, workflows), what a
prompt may read, where routing tables lead, whether a called function can bind. A part
the schema already rejected is skipped here, so each problem is reported once.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestration.define.policies import Backoff
from orchestration.errors import Problem
from orchestration.pipelines import steps as declared
from orchestration.pipelines.intents import intent_router
from orchestration.pipelines.schema import check_json_schema
from orchestration.pipelines.source import Source, pointer
from orchestration.pipelines.template import Placeholder, Template, TemplateSyntaxError, parse

KINDS = ("model", "call", "routing", "intents")
MODEL_ONLY = ("system_prompt", "prompt", "output_schema", "choices", "json_attempts")
ROUTING_ONLY = ("route_on", "default")
MAP_ONLY = ("min_success", "chunk_size", "concurrency")
UNKNOWN_TARGET = "no known workflow or pipeline"  # how a problem says a target is unknown
PASSED_AS_IS = ("retries", "timeout", "critical", "queue", "max_cost", "cache",
                "min_success", "chunk_size", "concurrency")


@dataclass
class StepPlan:
    """One step to declare: its callable, its ``task()`` options, where it is in the file."""

    name: str
    at: str
    fn: Callable[..., Any]
    options: dict[str, Any]


@dataclass
class Plan:
    """What the loader declares: the workflow's settings and steps, its triggers."""

    name: str
    inputs: list[str]
    queue: str | None
    budget: float | None
    steps: list[StepPlan] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class _Step:
    """A step's raw entry and what is known of it before the callables are built."""

    def __init__(self, name: str, raw: dict[str, Any]) -> None:
        self.name, self.raw = name, raw
        self.at = pointer("steps", name)
        self.kind = next((k for k in KINDS if k in raw), None)
        output = raw.get("output_key")
        self.output: str = output if isinstance(output, str) else name
        self.choices: list[str] | None = None
        self.routed_by: str | None = None  # the routing step that selects this one
        self.depends: list[str] = []


class Planner:
    """Checks one document and plans its steps; ``find`` names the known workflows."""

    def __init__(self, source: Source, find: Callable[[str], Any],
                 models: Mapping[str, Any] | None) -> None:
        self.source = source
        self.doc: dict[str, Any] = source.data if isinstance(source.data, dict) else {}
        self.find = find
        self.models = models
        name = self.doc.get("pipeline")
        inputs = [i for i in self.doc.get("inputs") or [] if isinstance(i, str)]
        queue, budget = self.doc.get("queue"), self.doc.get("budget")
        self.plan = Plan(name if isinstance(name, str) else "", inputs,
                         queue if isinstance(queue, str) else None,
                         float(budget) if isinstance(budget, int | float) else None)
        raw_steps = self.doc.get("steps")
        self.steps = {name: _Step(name, raw) for name, raw in (
            raw_steps.items() if isinstance(raw_steps, dict) else ()) if isinstance(raw, dict)}
        self.outputs = {step.output: step for step in self.steps.values()}
        self.routers: dict[str, declared.Router] = {}

    def problem(self, at: str, message: str) -> None:
        """Note a problem at ``at``."""
        self.plan.problems.append(self.source.problem(at, message))

    # -- the whole document ------------------------------------------------------------

    def run(self) -> Plan:
        """Every check, then the callables of steps that passed them."""
        self._check_names()
        for step in self.steps.values():
            self._check_kind(step)
        for step in self.steps.values():
            if step.kind == "routing":
                self._plan_routing(step)
        for step in self.steps.values():
            built = self._build(step)
            if built is not None:
                self.plan.steps.append(built)
        return self.plan

    def _check_names(self) -> None:
        inputs = set(self.plan.inputs)
        seen: dict[str, str] = {}
        for step in self.steps.values():
            other = seen.get(step.output)
            if other is not None:
                self.problem(step.at + "/output_key", f"steps {other!r} and {step.name!r} both "
                             f"output {step.output!r}; give one another output_key")
            seen[step.output] = step.name
            if step.output in inputs:
                self.problem(step.at + ("/output_key" if "output_key" in step.raw else ""),
                             f"{step.output!r} is both an input and the output of step "
                             f"{step.name!r}")
        for index, name in enumerate(self.plan.inputs):
            if name in ("ctx", "idempotency_key"):
                self.problem(pointer("inputs", index), f"{name!r} is reserved, not an input")

    def _check_kind(self, step: _Step) -> None:
        kinds = [k for k in KINDS if k in step.raw]
        if not kinds:
            self.problem(step.at, "a step needs one of 'model' (a model step), 'call' (a code "
                         "step), 'routing' (a routing step) or 'intents' (an intent step)")
        elif len(kinds) > 1:
            self.problem(step.at + "/" + kinds[1], f"a step is one kind: it has both "
                         f"{kinds[0]!r} and {kinds[1]!r}")
        for key in MODEL_ONLY:
            if key in step.raw and step.kind != "model":
                self.problem(step.at + "/" + key, f"only a model step (with 'model') takes {key!r}")
        for key in ROUTING_ONLY:
            if key in step.raw and step.kind != "routing":
                self.problem(step.at + "/" + key, f"only a routing step takes {key!r}")
        if "map" in step.raw and step.kind == "routing":
            self.problem(step.at + "/map", "a routing step cannot be a map")
        for key in MAP_ONLY:
            if key in step.raw and "map" not in step.raw:
                self.problem(step.at + "/" + key, f"{key!r} only applies to a map step "
                             "(with 'map')")
        if "output_schema" in step.raw and "choices" in step.raw:
            self.problem(step.at + "/choices", "a model step takes output_schema or choices, "
                         "not both")
        if isinstance(step.raw.get("choices"), list):
            step.choices = [c for c in step.raw["choices"] if isinstance(c, str)]
        self._check_depends(step)

    def _check_depends(self, step: _Step) -> None:
        depends = step.raw.get("depends_on")
        names = [depends] if isinstance(depends, str) else (
            depends if isinstance(depends, list) else [])
        for index, dep in enumerate(names):
            where = step.at + "/depends_on" + (f"/{index}" if isinstance(depends, list) else "")
            target = self.steps.get(dep) or self.outputs.get(dep)
            if target is None:
                self.problem(where, f"{dep!r} is no step or output of this pipeline "
                             f"(steps: {', '.join(self.steps)})")
            elif target is step:
                self.problem(where, "a step cannot depend on itself")
            else:
                step.depends.append(target.name)

    # -- names a step reads --------------------------------------------------------------

    def _readable(self, step: _Step, name: str, at: str, what: str) -> bool:
        """True when ``name`` is an input or another step's output; else a problem."""
        if name in self.plan.inputs or (name in self.outputs and self.outputs[name] is not step):
            return True
        if name in self.outputs:
            self.problem(at, f"{what} reads {name!r}, the output of this same step")
        elif name in self.steps:
            self.problem(at, f"{what} reads {name!r}, a step whose output is called "
                         f"{self.steps[name].output!r}: write {self.steps[name].output!r}")
        else:
            known = ", ".join(self.plan.inputs) or "none declared"
            self.problem(at, f"{what} reads {name!r}, which is no input (inputs: {known}) "
                         f"and no step output (outputs: {', '.join(self.outputs) or 'none'})")
        return False

    def _check_fields(self, placeholder: Placeholder, at: str) -> None:
        """``{{ step_output.field }}``: the field exists when the output's shape is known."""
        producer = self.outputs.get(placeholder.root)
        if producer is None or not placeholder.fields:
            return
        raw = producer.raw
        if producer.kind == "model" and "output_schema" not in raw:
            self.problem(at, f"{{{{ {placeholder.text} }}}}: {placeholder.root!r} is text (the "
                         f"answer of model step {producer.name!r}, which has no "
                         "output_schema); it has no fields")
            return
        schema = raw.get("output_schema")
        properties = schema.get("properties") if isinstance(schema, dict) else None
        if isinstance(properties, dict) and placeholder.fields[0] not in properties:
            self.problem(at, f"{{{{ {placeholder.text} }}}}: the output_schema of step "
                         f"{producer.name!r} has no property {placeholder.fields[0]!r} "
                         f"(it has: {', '.join(properties) or 'none'})")

    def _template(self, step: _Step, key: str) -> Template | None:
        text = step.raw.get(key)
        if not isinstance(text, str):
            return None
        at = step.at + "/" + key
        try:
            template = parse(text)
        except TemplateSyntaxError as exc:
            self.problem(at, f"cannot read the template: {exc}")
            return None
        for placeholder in template.placeholders:
            if self._readable(step, placeholder.root, at,
                              f"the placeholder {{{{ {placeholder.text} }}}}"):
                self._check_fields(placeholder, at)
        return template

    def _path(self, step: _Step, text: object, at: str, what: str) -> str | None:
        """An ``output`` / ``route_on`` name (with fields) that names something readable."""
        if not isinstance(text, str):
            return None
        root = text.split(".")[0]
        if not self._readable(step, root, at, what):
            return None
        self._check_fields(Placeholder(root, tuple(text.split(".")[1:]), 1), at)
        return text

    # -- routing ---------------------------------------------------------------------

    def _plan_routing(self, step: _Step) -> None:
        raw, at = step.raw, step.at
        route_on = raw.get("route_on")
        if route_on is None:
            if len(step.depends) != 1:
                self.problem(at + "/route_on" if "route_on" in raw else at,
                             "a routing step routes on its single dependency's output; it "
                             f"depends on {len(step.depends)} step(s) "
                             f"({', '.join(step.depends) or 'none'}): add route_on")
                return
            route_on = self.steps[step.depends[0]].output
        route_on = self._path(step, route_on, at + "/route_on", "route_on")
        table = raw.get("routing")
        if route_on is None or not isinstance(table, dict):
            return
        routes: dict[str, declared.Route] = {}
        children: dict[str, list[str]] = {}
        root = route_on.split(".")[0]
        available = set(self.plan.inputs) | {self.steps[d].output for d in step.depends} | {root}
        entries = [(value, target, at + pointer("routing", value)) for value, target in
                   table.items()]
        if isinstance(raw.get("default"), str):
            entries.append((None, raw["default"], at + "/default"))
        default: declared.Route | None = None
        for value, target, where in entries:
            if not isinstance(target, str):
                continue
            route = self._route(step, target, where, available, children)
            if route is None:
                continue
            if value is None:
                default = route
            else:
                routes[value] = route
        reads = sorted({root} | {name for names in children.values() for name in names})
        router = declared.Router(step.name, table=routes, default=default, route_on=route_on,
                                 reads=reads, find=self.find, child_inputs=children)
        self.routers[step.name] = router
        producer = self.outputs.get(route_on)
        if (default is None and producer is not None and producer.kind == "model"
                and "output_schema" not in producer.raw and producer.choices is None):
            # The table is the closed set of answers: the model step answers one of them.
            producer.choices = list(table)

    def _route(self, step: _Step, target: str, where: str, available: set[str],
               children: dict[str, list[str]]) -> declared.Route | None:
        if target in self.steps:
            chosen = self.steps[target]
            if chosen is step:
                self.problem(where, "a routing step cannot route to itself")
                return None
            if chosen.name in step.depends:
                self.problem(where, f"{target!r} runs before this routing step (it depends on "
                             "it); a routing target must come after")
                return None
            if chosen.routed_by not in (None, step.name):
                self.problem(where, f"step {target!r} is already selected by routing step "
                             f"{chosen.routed_by!r}; one routing step per target step")
                return None
            if "when" in chosen.raw:
                self.problem(where, f"step {target!r} has its own 'when'; a step a routing "
                             "table selects is run by the table alone")
                return None
            chosen.routed_by = step.name
            return declared.Route(target, is_step=True)
        if target == self.plan.name:
            self.problem(where, f"{target!r} is this pipeline: a pipeline cannot route to itself")
            return None
        workflow = self.find(target)
        if workflow is None:
            self.problem(where, f"target {target!r} is no step of this pipeline (steps: "
                         f"{', '.join(self.steps)}) and {UNKNOWN_TARGET}")
            return None
        try:
            compiled = workflow.validate()
        except Exception as exc:
            self.problem(where, f"workflow {target!r} is not valid: {exc}")
            return None
        takes = set(workflow.declared_inputs or compiled.inputs)
        missing = sorted(set(compiled.required_inputs) - available)
        if missing:
            self.problem(where, f"workflow {target!r} needs input(s) {', '.join(missing)}, "
                         f"which this routing step cannot give (it has: "
                         f"{', '.join(sorted(available))})")
            return None
        children[target] = sorted(takes & available)
        return declared.Route(target, is_step=False)

    # -- one step's callable and options ------------------------------------------------

    def _build(self, step: _Step) -> StepPlan | None:
        before = len(self.plan.problems)
        fn = {"model": self._model, "call": self._call, "routing": self._router,
              "intents": self._intents}.get(step.kind or "", lambda _: None)(step)
        options = self._options(step)
        if fn is None or len(self.plan.problems) > before:
            return None
        return StepPlan(step.name, step.at, fn, options)

    def _model(self, step: _Step) -> Callable[..., Any] | None:
        raw, at = step.raw, step.at
        model = raw.get("model")
        if isinstance(model, str) and self.models is not None and model not in self.models:
            self.problem(at + "/model", f"model {model!r} is not in the model catalogue "
                         f"(known: {', '.join(sorted(self.models))}); add it there "
                         "(ORCH_MODELS_FILE)")
        prompt, system = self._template(step, "prompt"), self._template(step, "system_prompt")
        reads = [*(prompt.names if prompt else ()), *(system.names if system else ())]
        if "prompt" not in raw:
            if not self.plan.inputs:
                self.problem(at, "a model step without 'prompt' sends the pipeline's inputs, "
                             "and the pipeline declares none: add 'inputs' or a prompt")
            reads += self.plan.inputs
        mapped = raw.get("map")
        if isinstance(mapped, str) and mapped not in reads:
            self.problem(at + "/map", f"map={mapped!r}: the prompt never reads {mapped!r} "
                         f"(it reads: {', '.join(dict.fromkeys(reads)) or 'nothing'})")
        schema = raw.get("output_schema")
        if schema is not None:
            reason = check_json_schema(schema)
            if reason:
                self.problem(at + "/output_schema", reason)
        return declared.ModelCall(step.name, prompt=prompt if "prompt" in raw else None,
                                  system=system, reads=list(dict.fromkeys(reads)),
                                  output_schema=schema, choices=step.choices,
                                  json_attempts=int(raw.get("json_attempts") or 3))

    def _call(self, step: _Step) -> Callable[..., Any] | None:
        text, at = step.raw.get("call"), step.at + "/call"
        if not isinstance(text, str):
            return None
        module_name, _, attribute = text.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            self.problem(at, f"cannot import module {module_name!r}: "
                         f"{type(exc).__name__}: {exc}")
            return None
        fn = getattr(module, attribute, None)
        if fn is None or not callable(fn):
            self.problem(at, f"module {module_name!r} has no function {attribute!r}")
            return None
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return fn  # type: ignore[no-any-return]
        for param in params:
            if param.name == "ctx" or param.default is not param.empty:
                continue
            if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue  # the engine refuses these itself, with its own message
            self._readable(step, param.name, at, f"parameter {param.name!r} of {text}")
        mapped = step.raw.get("map")
        names = [p.name for p in params]
        if isinstance(mapped, str) and mapped not in names:
            self.problem(step.at + "/map", f"map={mapped!r} must name a parameter of {text} "
                         f"(it has: {', '.join(names) or 'none'})")
        return fn  # type: ignore[no-any-return]

    def _router(self, step: _Step) -> Callable[..., Any] | None:
        return self.routers.get(step.name)

    def _intents(self, step: _Step) -> Callable[..., Any] | None:
        raw, at = step.raw.get("intents"), step.at + "/intents"
        if not isinstance(raw, dict):
            return None
        if isinstance(raw.get("text"), str):
            self._readable(step, raw["text"], at + "/text", "the intent step's text")
        return intent_router(step.name, raw, at, self.source.path.parent, self.problem)

    def _options(self, step: _Step) -> dict[str, Any]:
        raw = step.raw
        options: dict[str, Any] = {"name": step.name, "output": step.output}
        options.update({key: raw[key] for key in PASSED_AS_IS if key in raw})
        options.update({key: raw[key] for key in ("model", "map") if isinstance(raw.get(key), str)})
        depends = list(step.depends)
        if step.routed_by is not None:
            depends.append(step.routed_by)
            router = self.routers.get(step.routed_by)
            if router is not None:
                options["when"] = declared.Selected(f"{step.name}_selected", router=router,
                                                    target=step.name)
        if depends:
            options["depends_on"] = list(dict.fromkeys(depends))
        backoff = raw.get("backoff")
        if isinstance(backoff, dict):
            options["backoff"] = Backoff(**backoff)
        elif isinstance(backoff, int | float):
            options["backoff"] = backoff
        if "fallback" in raw:
            options["fallback"] = raw["fallback"]
        if isinstance(raw.get("errors"), dict):
            options["on_error"] = dict(raw["errors"])
        when = raw.get("when")
        if isinstance(when, dict) and step.routed_by is None:
            condition = self._condition(step, when)
            if condition is not None:
                options["when"] = condition
        gate = raw.get("gate")
        if isinstance(gate, dict):
            options["gate"] = self._gate(step, gate)
        return options

    def _condition(self, step: _Step, when: dict[str, Any]) -> declared.Condition | None:
        output = self._path(step, when.get("output"), step.at + "/when/output", "when")
        operator = next((op for op in declared.Condition.OPERATORS if op in when), None)
        if output is None or operator is None:
            return None
        return declared.Condition(f"{step.name}_when", output=output, operator=operator,
                                  operand=when[operator])

    def _gate(self, step: _Step, gate: dict[str, Any]) -> declared.OutputGate:
        at = step.at + "/gate"
        if "schema" in gate:
            reason = check_json_schema(gate["schema"])
            if reason:
                self.problem(at + "/schema", reason)
        low, high = gate.get("min_length"), gate.get("max_length")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            self.problem(at + "/max_length", f"max_length {high} is under min_length {low}")
        return declared.OutputGate(f"{step.name}_gate", schema=gate.get("schema"),
                                   min_length=low if isinstance(low, int) else None,
                                   max_length=high if isinstance(high, int) else None)
