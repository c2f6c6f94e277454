"""One step of a workflow: the function, how it binds, and its policies."""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestration.core.envelope import dumps
from orchestration.core.names import identifier, queue_name
from orchestration.define.adaptive import AdaptiveTimeout
from orchestration.define.gates import Gate
from orchestration.define.memory import Memory
from orchestration.define.on_error import ErrorPolicy, as_on_error
from orchestration.define.policies import (
    Backoff,
    Fallback,
    TimeoutPolicy,
    as_backoff,
    as_timeout,
    check_plain_function,
    is_async,
)
from orchestration.define.throughput import Limit, batch_options, step_limit
from orchestration.define.vocabulary import STEP_SPELLINGS, spelled_here
from orchestration.errors import WorkflowDefinitionError

CTX_PARAM = "ctx"
MAX_CACHE_TTL = 100 * 365 * 24 * 3600.0  # seconds; past this, expiry dates overflow anyway

STEP_OPTIONS = frozenset(
    {
        "name", "output", "depends_on", "retries", "backoff", "timeout", "fallback",
        "critical", "queue", "model", "max_cost", "gate", "on_retry", "map", "min_success",
        "chunk_size", "when", "cache", "concurrency", "on_error", "gather",
        "max_parallel", "concurrency_key", "batch_size", "batch_wait",
    }
)


@dataclass(frozen=True)
class StepSpec:
    """A validated step definition; built by ``Workflow.task``."""

    workflow: str
    name: str
    fn: Callable[..., Any]
    params: tuple[str, ...]
    optional_params: frozenset[str]
    wants_ctx: bool
    output: str
    depends_on: tuple[str, ...] = ()
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    timeout: TimeoutPolicy | AdaptiveTimeout | None = None
    fallback: Fallback | None = None
    critical: bool = True
    queue: str | None = None
    model: str | None = None
    max_cost: float | None = None
    gate: Gate | None = None
    on_retry: Callable[[int, BaseException, dict[str, Any]], dict[str, Any] | None] | None = None
    map: str | None = None  # the parameter that receives one element at a time
    min_success: int | float | None = None
    chunk_size: int | None = None
    concurrency: int = 1  # map elements run at once inside one chunk (I/O-bound calls)
    when: Callable[..., Any] | None = None
    when_params: tuple[str, ...] = ()
    cache: float | bool = False  # True: cache forever; seconds: time to live
    on_error: ErrorPolicy | None = None  # per-error-kind actions (see define/on_error.py)
    # The parameter that receives {depends_on name: output} of every depends_on entry.
    gather: str | None = None
    limit: Limit | None = None  # max_parallel/concurrency_key: executions at once, fleet-wide
    batch_size: int | None = None  # elements from different runs per call (lists in, list out)
    batch_wait: float = 0.0  # seconds a partly filled batch waits for more elements
    is_async: bool = False  # async def: attempts run on the worker's event loop

    def required_successes(self, total: int) -> int:
        """How many elements of a map of ``total`` must succeed (all, unless min_success)."""
        if self.min_success is None:
            return total
        if isinstance(self.min_success, float):
            return min(total, math.ceil(self.min_success * total))
        return min(total, self.min_success)

    @property
    def task_name(self) -> str:
        """The Celery task name, as Flower shows it."""
        return f"{self.workflow}.{self.name}"

    @property
    def where(self) -> str:
        """How error messages name this step."""
        return f"step {self.task_name!r}"


class Step:
    """What ``@workflow.task`` returns: calls the plain function, and names the step.

    Pass it to ``depends_on=`` of another step; call it to unit-test the function.
    """

    def __init__(self, spec: StepSpec) -> None:
        self.spec = spec
        self.__wrapped__ = spec.fn
        self.__name__ = spec.name
        self.__doc__ = spec.fn.__doc__

    @property
    def name(self) -> str:
        """The step's name within its workflow."""
        return self.spec.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.spec.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Step {self.spec.task_name}>"


def _suggest(word: str, choices: Sequence[str]) -> str:
    # A typo usually keeps the start of the word ('retry' -> 'retries', not 'on_retry').
    def shared_prefix(choice: str) -> int:
        return next((i for i, (a, b) in enumerate(zip(word, choice, strict=False)) if a != b),
                    min(len(word), len(choice)))

    best = max(choices, key=shared_prefix, default="")
    if shared_prefix(best) >= 3:
        return f" (did you mean {best!r}?)"
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _depends_names(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    names: list[str] = []
    for item in items:
        if isinstance(item, Step):
            names.append(item.name)
        elif isinstance(item, str) and item:
            names.append(item)
        else:
            raise WorkflowDefinitionError(
                f"{where}: depends_on takes steps or step/output names, got {item!r}"
            )
    return tuple(dict.fromkeys(names))


def _check_number(options: dict[str, Any], key: str, where: str, *, integer: bool) -> None:
    value = options.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 \
            or not math.isfinite(value) or (integer and not isinstance(value, int)):
        kind = "a whole number" if integer else "a number"
        raise WorkflowDefinitionError(f"{where}: {key} must be {kind} >= 0, got {value!r} "
                                      "(finite)")


def build_spec(workflow: str, fn: Callable[..., Any], options: dict[str, Any]) -> StepSpec:
    """Check a decorator's options and the function's signature; build the StepSpec."""
    if not callable(fn):
        raise WorkflowDefinitionError(f"workflow {workflow!r}: task() decorates functions, "
                                      f"got {fn!r}")
    name = options.get("name") or getattr(fn, "__name__", None)
    if name is None:
        raise WorkflowDefinitionError(f"workflow {workflow!r}: {fn!r} has no __name__; "
                                      "name the step with task(name=...)")
    name = identifier(name, "name", f"workflow {workflow!r}")
    where = f"step {workflow}.{name!s}"
    unknown = sorted(set(options) - STEP_OPTIONS)
    if unknown:
        # Another framework's spelling is answered with ours, not a near-miss guess.
        answer = spelled_here(unknown[0], STEP_SPELLINGS) or (
            f"unknown option {unknown[0]!r}{_suggest(unknown[0], sorted(STEP_OPTIONS))}")
        raise WorkflowDefinitionError(f"{where}: {answer}")
    check_plain_function(fn, "the step function", where, allow_async=True)
    if is_async(fn) and options.get("batch_size") is not None:
        raise WorkflowDefinitionError(
            f"{where}: batch_size= is not supported for an async def step (its batch call "
            "runs the function synchronously); use a plain def, or map= with concurrency=")
    params, optional, wants_ctx = _signature(fn, where)
    _check_number(options, "retries", where, integer=True)
    _check_number(options, "max_cost", where, integer=False)
    for key in ("queue", "model"):
        if options.get(key) is not None:
            queue_name(options[key], key, where)
    critical = options.get("critical", True)
    if not isinstance(critical, bool):
        raise WorkflowDefinitionError(f"{where}: critical must be True or False")
    output = identifier(options.get("output") or name, "output", where)
    return StepSpec(
        workflow=workflow,
        name=name,
        fn=fn,
        params=params,
        optional_params=optional,
        wants_ctx=wants_ctx,
        is_async=is_async(fn),
        output=output,
        depends_on=_depends_names(options.get("depends_on"), where),
        gather=_gather_option(options, params, where),
        retries=int(options.get("retries") or 0),
        backoff=as_backoff(options.get("backoff"), where),
        timeout=as_timeout(options.get("timeout"), where),
        fallback=_fallback_option(options, params, optional, where),
        critical=critical,
        queue=options.get("queue"),
        model=options.get("model"),
        max_cost=options.get("max_cost"),
        gate=_gate_option(options, where),
        on_retry=_on_retry_option(options, where),
        cache=_cache_option(options, where),
        on_error=as_on_error(options.get("on_error"), where,
                             is_map=options.get("map") is not None),
        limit=step_limit(options, where),
        **batch_options(options, where),
        **_map_options(options, params, where),
        **_when_option(options, where),
    )


def _gather_option(options: dict[str, Any], params: tuple[str, ...], where: str) -> str | None:
    """``gather`` names the parameter that receives every ``depends_on`` output by name."""
    gather = options.get("gather")
    if gather is None:
        return None
    if not isinstance(gather, str) or gather not in params:
        raise WorkflowDefinitionError(
            f"{where}: gather={gather!r} must name a parameter of the function (it receives "
            f"{{name: output}} of every depends_on entry); parameters: "
            f"{', '.join(params) or 'none'}")
    if not _depends_names(options.get("depends_on"), where):
        raise WorkflowDefinitionError(
            f"{where}: gather={gather!r} collects the outputs of depends_on, and depends_on "
            "is empty; name the steps whose outputs it receives")
    if gather == options.get("map"):
        raise WorkflowDefinitionError(
            f"{where}: parameter {gather!r} cannot be both map= and gather=")
    return gather


def gathered_outputs(spec: StepSpec, steps: Mapping[str, StepSpec],
                     by_output: Mapping[str, StepSpec], taken: Collection[str]) -> dict[str, str]:
    """With ``gather=``: each ``depends_on`` name -> the output it stands for.

    ``taken`` holds the workflow's inputs and outputs: the gathered parameter must not
    also be one of them (it would be bound twice, by name and by ``gather``).
    """
    if spec.gather is None:
        return {}
    if spec.gather in taken:
        raise WorkflowDefinitionError(
            f"{spec.where}: parameter {spec.gather!r} receives the depends_on outputs "
            f"(gather={spec.gather!r}) and is also a step output or workflow input of that "
            "name; rename the parameter")
    return {dep: (steps.get(dep) or by_output[dep]).output for dep in spec.depends_on}


def _cache_option(options: dict[str, Any], where: str) -> float | bool:
    value = options.get("cache", False)
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and 0 < value <= MAX_CACHE_TTL:
        return float(value)
    raise WorkflowDefinitionError(f"{where}: cache must be True/False or a TTL in seconds > 0 "
                                  f"(at most {MAX_CACHE_TTL:g}; True caches forever), "
                                  f"got {value!r}")


def _fallback_option(options: dict[str, Any], params: tuple[str, ...],
                     optional: frozenset[str], where: str) -> Fallback | None:
    """A fallback value must be JSON; a callable must take the step's arguments by name."""
    target = options.get("fallback")
    if target is None:
        return None
    if not callable(target):
        try:
            dumps(target)
        except (TypeError, ValueError) as exc:
            raise WorkflowDefinitionError(
                f"{where}: the fallback value {type(target).__name__} is not JSON: {exc}"
            ) from None
        return Fallback(target)
    check_plain_function(target, "its fallback", where)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return Fallback(target)  # a builtin without a signature: nothing to check
    # It is called with the step's resolved arguments: the required ones always, the
    # optional ones when given (never ctx).
    for kwargs in ({p: None for p in params if p not in optional}, dict.fromkeys(params)):
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise WorkflowDefinitionError(
                f"{where}: the fallback {getattr(target, '__name__', target)!r} is called with "
                f"the step's arguments ({', '.join(params) or 'none'}) and cannot take them: "
                f"{exc}") from None
    return Fallback(target)


def _gate_option(options: dict[str, Any], where: str) -> Gate | None:
    check = options.get("gate")
    if check is None:
        return None
    if callable(check) and not isinstance(check, type):
        # An async gate's verdict would be a coroutine: truthy, so every output passes.
        check_plain_function(check, "its gate", where)
    return Gate(check, where)


def _on_retry_option(options: dict[str, Any], where: str) -> Any:
    hook = _check_callable(options, "on_retry", where)
    if hook is None:
        return None
    check_plain_function(hook, "on_retry", where)
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):
        return hook
    try:
        signature.bind(1, Exception(), {})
    except TypeError as exc:
        raise WorkflowDefinitionError(
            f"{where}: on_retry is called as on_retry(attempt, exception, params) and "
            f"cannot take those: {exc}") from None
    return hook


def _map_options(options: dict[str, Any], params: tuple[str, ...], where: str) -> dict[str, Any]:
    mapped = options.get("map")
    if mapped is None:
        for key in ("min_success", "chunk_size", "concurrency"):
            if options.get(key) is not None:
                raise WorkflowDefinitionError(f"{where}: {key} only applies to a map step")
        return {}
    if mapped not in params:
        raise WorkflowDefinitionError(
            f"{where}: map={mapped!r} must name a parameter of the function "
            f"(it receives one element at a time); parameters: {', '.join(params) or 'none'}")
    minimum = options.get("min_success")
    if minimum is not None and not (
            (isinstance(minimum, int) and not isinstance(minimum, bool) and minimum >= 1)
            or (isinstance(minimum, float) and 0 < minimum <= 1)):
        raise WorkflowDefinitionError(
            f"{where}: min_success must be a count >= 1 or a fraction in (0, 1], got {minimum!r}")
    chunk = options.get("chunk_size")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise WorkflowDefinitionError(f"{where}: chunk_size must be a whole number >= 1")
    concurrency = options.get("concurrency", 1)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise WorkflowDefinitionError(f"{where}: concurrency must be a whole number >= 1")
    return {"map": mapped, "min_success": minimum, "chunk_size": chunk,
            "concurrency": concurrency}


def _when_option(options: dict[str, Any], where: str) -> dict[str, Any]:
    predicate = options.get("when")
    if predicate is None:
        return {}
    if not callable(predicate):
        raise WorkflowDefinitionError(f"{where}: when must be a callable, got {predicate!r}")
    check_plain_function(predicate, "its when= predicate", where)
    params, _, wants_ctx = _signature(predicate, f"{where} (its when= predicate)")
    if wants_ctx:
        raise WorkflowDefinitionError(f"{where}: a when= predicate cannot take ctx")
    return {"when": predicate, "when_params": params}


def _check_callable(options: dict[str, Any], key: str, where: str) -> Any:
    value = options.get(key)
    if value is not None and not callable(value):
        raise WorkflowDefinitionError(f"{where}: {key} must be callable, got {value!r}")
    return value


def _signature(fn: Callable[..., Any], where: str) -> tuple[tuple[str, ...], frozenset[str], bool]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise WorkflowDefinitionError(f"{where}: cannot read the function's signature") from exc
    params: list[str] = []
    optional: set[str] = set()
    wants_ctx = False
    first = next(iter(signature.parameters), None)
    if first == "self":
        raise WorkflowDefinitionError(
            f"{where}: the first parameter is 'self': a method defined in a class body cannot "
            "be a step (self would become a required input); use a module-level function, "
            "a staticmethod, or decorate the bound method (wf.task(obj.method))")
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise WorkflowDefinitionError(
                f"{where}: parameter {param.name!r} cannot be bound by name "
                "(no *args, **kwargs or positional-only parameters)"
            )
        if param.name == CTX_PARAM:
            wants_ctx = True
            continue
        params.append(param.name)
        if param.default is not param.empty:
            optional.add(param.name)
    return tuple(params), frozenset(optional), wants_ctx


@dataclass(frozen=True)
class BoundStep:
    """A step with its names resolved against the rest of its workflow.

    ``sources`` maps each parameter to the output or workflow input that fills it;
    ``requires`` holds every output whose loss to a critical failure skips this step.
    """

    spec: StepSpec
    queue: str
    sources: dict[str, str]
    requires: frozenset[str]
    upstream: frozenset[str]  # names of the steps this one depends on
    run_budget: float | None = None  # the workflow's budget (USD) per run
    when_sources: dict[str, str] = field(default_factory=dict)
    memory: Memory | None = None  # the workflow's conversation memory (ctx.memory)
    # With gather=: each depends_on name -> the output it stands for (its key in the mapping).
    gathered: dict[str, str] = field(default_factory=dict)
