"""Semantic routing: a step that picks a route for a message by its intent.

``wf.router(name, text=..., examples=..., threshold=..., default=...)`` declares a step
whose output is the decision, ``{"route", "confidence", "scores", ...}``: the best
label when its score reaches ``threshold``, else ``default``. Branches select on it with
``when=router.chose("billing")``; with ``routes={label: workflow}`` the router instead
starts the chosen workflow as a child run and outputs the child's outputs.

The examples (``{label: [utterance, ...]}``, given inline or as a JSON/YAML file) are the
classifier's training set: ``method="similarity"`` (nearest examples in a local LSA
embedding) or ``"classifier"`` (logistic regression on TF-IDF). The classifier is
trained once per process when first used, by the execute floor (``ctx.intents``); this
module only declares and checks.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import yaml

from orchestration.core.names import identifier
from orchestration.define.step import CTX_PARAM, Step
from orchestration.errors import NonRetryableError, WorkflowDefinitionError

SIMILARITY: Final = "similarity"
CLASSIFIER: Final = "classifier"
METHODS: Final = (SIMILARITY, CLASSIFIER)
ROUTER_OPTIONS: Final = frozenset({"text", "examples", "threshold", "default", "method",
                                   "routes"})
DEFAULT_THRESHOLD: Final = 0.5


@dataclass(frozen=True)
class RouterSpec:
    """A checked semantic router: what it reads, what it learns from, how it decides.

    ``examples`` maps each label to its utterances; ``routes`` (optional) each label to
    the workflow started as a child run; ``child_inputs`` the inputs passed to each.
    """

    step: str
    text: str
    examples: Mapping[str, tuple[str, ...]]
    threshold: float
    default: str
    method: str
    source: str  # where the examples came from (a file, or "examples=")
    routes: Mapping[str, Any] | None = None
    child_inputs: Mapping[str, tuple[str, ...]] | None = None
    child_required: frozenset[str] = frozenset()  # inputs some route's workflow requires

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels, as the examples list them."""
        return tuple(self.examples)

    @property
    def fingerprint(self) -> str:
        """The same for the same method and examples in every process (the model's key)."""
        material = json.dumps([self.method, {k: list(v) for k, v in self.examples.items()}],
                              sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def decide(self, scores: Mapping[str, float]) -> dict[str, Any]:
        """The decision record for these scores (the router's output without ``routes``)."""
        best = max(self.labels, key=lambda label: (scores.get(label, 0.0),
                                                   -self.labels.index(label)))
        confidence = float(scores.get(best, 0.0))
        chosen = confidence >= self.threshold
        return {"route": best if chosen else self.default, "confidence": round(confidence, 4),
                "label": best, "defaulted": not chosen, "threshold": self.threshold,
                "method": self.method,
                "scores": {label: round(float(scores.get(label, 0.0)), 4)
                           for label in self.labels}}

    def describe(self, decision: Mapping[str, Any]) -> str:
        """One line for the trace and the log."""
        if decision["defaulted"]:
            return (f"routed to default {decision['route']!r}: best {decision['label']!r} "
                    f"{decision['confidence']:.2f} < threshold {self.threshold:g}")
        return (f"routed to {decision['route']!r}: {decision['confidence']:.2f} >= "
                f"threshold {self.threshold:g}")


class IntentServices(Protocol):
    """What a router step uses of ``ctx.intents``: the scores of a message (trained once)."""

    def scores(self, router: RouterSpec, text: str) -> dict[str, float]:
        """``{label: score in 0..1}`` for ``text``."""


def _signature(names: list[str], optional: set[str]) -> inspect.Signature:
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                default=None if name in optional else inspect.Parameter.empty)
              for name in names]
    return inspect.Signature([*params, inspect.Parameter(CTX_PARAM,
                                                         inspect.Parameter.KEYWORD_ONLY)])


class RouterStep:
    """The router's step function: classify the text, decide, maybe start the child."""

    def __init__(self, spec: RouterSpec, params: list[str], optional: set[str]) -> None:
        self.spec = spec
        self.__name__ = spec.step
        # Part of the workflow's version: new examples, threshold or routes make a new one.
        routes = sorted((k, getattr(v, "name", "")) for k, v in (spec.routes or {}).items())
        self.__qualname__ = (f"router {spec.step} {spec.method} {spec.fingerprint} "
                             f"threshold={spec.threshold:g} default={spec.default} "
                             f"routes={routes}")
        self.__signature__ = _signature(params, optional)
        self.__doc__ = f"Semantic router: {', '.join(spec.labels)} (default {spec.default})."

    def __call__(self, *, ctx: Any, **values: Any) -> Any:
        text = values.get(self.spec.text)
        if not isinstance(text, str):
            raise NonRetryableError(f"router {self.spec.step!r}: {self.spec.text!r} must be "
                                    f"text, got {type(text).__name__}")
        services: IntentServices = ctx.intents
        decision = self.spec.decide(services.scores(self.spec, text))
        ctx.note(self.spec.describe(decision))
        ctx.log.info("intent routed", router=self.spec.step, route=decision["route"],
                     confidence=decision["confidence"], defaulted=decision["defaulted"])
        if self.spec.routes is None:
            return decision
        target = decision["route"]
        inputs = {name: values[name] for name in (self.spec.child_inputs or {})[target]
                  if name in values}
        return ctx.run_child(self.spec.routes[target], **inputs)

    def __repr__(self) -> str:
        return f"<RouterStep {self.spec.step}>"


class Chosen:
    """A ``when=`` predicate: the router's decision is one of ``labels``."""

    def __init__(self, router: RouterSpec, output: str, labels: tuple[str, ...]) -> None:
        self.output, self.labels = output, labels
        self.__name__ = f"{router.step}_chose_{'_'.join(labels)}"
        self.__signature__ = inspect.Signature(
            [inspect.Parameter(output, inspect.Parameter.KEYWORD_ONLY)])

    def __call__(self, **values: Any) -> bool:
        decision = values.get(self.output)
        return isinstance(decision, dict) and decision.get("route") in self.labels


class Router(Step):
    """What ``wf.router(...)`` returns: a step, and ``chose(label)`` for branches."""

    def __init__(self, step: Step, router: RouterSpec) -> None:
        super().__init__(step.spec)
        self.router = router

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels it routes between."""
        return self.router.labels

    def chose(self, *labels: str) -> Chosen:
        """``when=`` predicate of a branch: True when the router chose one of ``labels``."""
        where = f"router {self.spec.task_name!r}"
        if not labels:
            raise WorkflowDefinitionError(f"{where}: chose() needs at least one label "
                                          f"({', '.join(self.labels)})")
        unknown = [label for label in labels if label not in self.labels]
        if unknown:
            raise WorkflowDefinitionError(
                f"{where}: chose({unknown[0]!r}): no such label; its labels: "
                f"{', '.join(self.labels)}")
        if self.router.routes is not None:
            raise WorkflowDefinitionError(
                f"{where}: chose() selects branches on the router's decision, and this "
                "router starts a child run per route (routes=): its output is the child's "
                "outputs. Drop routes= to branch with when=router.chose(...)")
        return Chosen(self.router, self.spec.output, tuple(labels))


def router_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``wf.router`` keywords into the router's own and the step's options."""
    own = {key: options[key] for key in options if key in ROUTER_OPTIONS}
    return own, {key: value for key, value in options.items() if key not in ROUTER_OPTIONS}


def load_examples(value: object, where: str) -> tuple[dict[str, tuple[str, ...]], str]:
    """``{label: [utterance, ...]}`` given inline or as a ``.json``/``.yaml`` file path."""
    source = "examples="
    if isinstance(value, str | Path):
        path = Path(value)
        source = str(path)
        if path.suffix.lower() not in (".json", ".yaml", ".yml"):
            raise WorkflowDefinitionError(f"{where}: examples file {source!r} must be .json, "
                                          ".yaml or .yml")
        try:
            text = path.read_text(encoding="utf-8")
            value = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except OSError as exc:
            raise WorkflowDefinitionError(f"{where}: cannot read examples file {source!r}: "
                                          f"{exc.strerror or exc}") from None
        except (ValueError, yaml.YAMLError) as exc:
            raise WorkflowDefinitionError(f"{where}: examples file {source!r} is not valid "
                                          f"{path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(value, Mapping) or not value:
        raise WorkflowDefinitionError(
            f"{where}: examples ({source}) must map each label to a list of example "
            f"utterances, got {'nothing' if not value else type(value).__name__}")
    examples: dict[str, tuple[str, ...]] = {}
    for label, utterances in value.items():
        identifier(label, "label", f"{where}, examples ({source})")
        if isinstance(utterances, str) or not isinstance(utterances, list | tuple):
            raise WorkflowDefinitionError(f"{where}: label {label!r} ({source}) must have a "
                                          "list of example utterances")
        texts = tuple(dict.fromkeys(u.strip() for u in utterances
                                    if isinstance(u, str) and u.strip()))
        if not texts:
            raise WorkflowDefinitionError(f"{where}: label {label!r} ({source}) has no "
                                          "examples; give it at least one utterance")
        if len(texts) != len(utterances):
            raise WorkflowDefinitionError(f"{where}: label {label!r} ({source}) has an empty, "
                                          "repeated or non-text example")
        examples[label] = texts
    if len(examples) < 2:
        raise WorkflowDefinitionError(f"{where}: examples ({source}) need at least 2 labels "
                                      f"to route between, got {', '.join(examples)}")
    return examples, source


def check_threshold(value: object, where: str) -> float:
    """A threshold in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not 0 < value <= 1:
        raise WorkflowDefinitionError(f"{where}: threshold must be a number in (0, 1], "
                                      f"got {value!r}")
    return float(value)


def build_router(step: str, options: dict[str, Any], workflow_type: type, where: str,
                 child_inputs: Any) -> RouterSpec:
    """Check the router's own options; ``child_inputs(workflow)`` names what a route needs."""
    text = options.get("text")
    if text is None:
        raise WorkflowDefinitionError(f"{where}: text= names the input or step output the "
                                      "router classifies (e.g. text=\"message\")")
    text = identifier(text, "text", where)
    if "examples" not in options:
        raise WorkflowDefinitionError(f"{where}: examples= is required ({{label: [utterance, "
                                      "...]}} or a .json/.yaml file)")
    examples, source = load_examples(options["examples"], where)
    method = options.get("method", SIMILARITY)
    if method not in METHODS:
        raise WorkflowDefinitionError(f"{where}: method must be one of {', '.join(METHODS)}, "
                                      f"got {method!r}")
    threshold = check_threshold(options.get("threshold", DEFAULT_THRESHOLD), where)
    default = options.get("default")
    if default is None or default not in examples:
        raise WorkflowDefinitionError(
            f"{where}: default={default!r} must be one of its labels ({', '.join(examples)}): "
            "the route taken below the threshold")
    routes = options.get("routes")
    spec = RouterSpec(step=step, text=text, examples=examples, threshold=threshold,
                      default=default, method=method, source=source)
    if routes is None:
        return spec
    if not isinstance(routes, Mapping):
        raise WorkflowDefinitionError(f"{where}: routes must map labels to workflows, got "
                                      f"{type(routes).__name__}")
    unknown = sorted(set(routes) - set(examples))
    if unknown:
        raise WorkflowDefinitionError(f"{where}: routes names {unknown[0]!r}, which is no "
                                      f"label of its examples ({', '.join(examples)})")
    missing = [label for label in examples if label not in routes]
    if missing:
        raise WorkflowDefinitionError(f"{where}: routes gives no workflow for label(s) "
                                      f"{', '.join(missing)}; every label needs one")
    for label, target in routes.items():
        if not isinstance(target, workflow_type):
            raise WorkflowDefinitionError(f"{where}: routes[{label!r}] must be a Workflow, "
                                          f"got {target!r}")
    needs = {label: child_inputs(target) for label, target in routes.items()}
    return RouterSpec(step=step, text=text, examples=examples, threshold=threshold,
                      default=default, method=method, source=source, routes=dict(routes),
                      child_inputs={label: (*required, *optional)
                                    for label, (required, optional) in needs.items()},
                      child_required=frozenset(name for required, _ in needs.values()
                                               for name in required))


class _Declaring(Protocol):
    """What :func:`declare_router` uses of a ``Workflow`` (define/workflow.py imports this)."""

    name: str

    def task(self, fn: None = None, /, **options: Any) -> Any:
        """The step decorator."""


def declare_router(workflow: _Declaring, name: str, options: dict[str, Any]) -> Router:
    """``wf.router(name, text=..., examples=..., ...)``: declare the step, return a Router.

    Router options: ``text`` (the input or output classified), ``examples`` (``{label:
    [utterance, ...]}`` or a .json/.yaml path), ``threshold`` (in (0, 1], default 0.5),
    ``default`` (a label: the route below the threshold), ``method`` (``similarity`` or
    ``classifier``), ``routes`` (``{label: Workflow}``: start the chosen one as a child
    run). Any other keyword is a step option (``retries``, ``queue``, ``output``, ...).
    """
    step = identifier(name, "name", f"workflow {workflow.name!r}")
    where = f"router {workflow.name}.{step}"
    own, step_options = router_options(options)
    if "name" in step_options:
        raise WorkflowDefinitionError(f"{where}: the router's name is its first argument")
    spec = build_router(step, own, type(workflow), where, _child_inputs)
    params = [spec.text]
    optional: set[str] = set()
    if spec.child_inputs is not None:
        wanted = {name for names in spec.child_inputs.values() for name in names}
        optional = wanted - spec.child_required - {spec.text}
        params += sorted(wanted - {spec.text})
    fn = RouterStep(spec, params, optional)
    declared = workflow.task(name=step, **step_options)(fn)
    return Router(declared, spec)


def _child_inputs(child: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) inputs of a route's workflow (checked now: it must be whole)."""
    try:
        compiled = child.validate()
    except WorkflowDefinitionError as exc:
        raise WorkflowDefinitionError(f"route workflow {child.name!r} is not valid: {exc}") \
            from None
    required = tuple(sorted(compiled.required_inputs))
    known = child.declared_inputs if child.declared_inputs is not None else compiled.inputs
    return required, tuple(sorted(set(known) - set(required)))

