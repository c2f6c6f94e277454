"""``load_pipeline`` / ``load_pipelines``: pipeline files become registered workflows.

Loading is all or nothing. Every file is parsed and checked against the schema, then
planned (names, templates, routing tables, called functions) and declared on a scratch
host, so that the engine's own checks (bindings, cycles, options, triggers) run too;
only a pipeline without any problem is declared on the deployment's host. A routing
target that names no step of its pipeline may name a workflow the deployment knows or
another pipeline: in the folder being loaded, or beside the file. Pipelines a file
routes to are loaded before it.

A pipeline's version (``runs.workflow_version``) is the hash of its content, so runs
started from one revision of a file are told apart from runs of the next.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from orchestration.core.envelope import dumps
from orchestration.core.settings import Settings
from orchestration.define.compiling import CompiledWorkflow
from orchestration.define.host import default_host
from orchestration.define.workflow import Host, Workflow
from orchestration.errors import OrchestrationError, PipelineError, Problem
from orchestration.pipelines.plan import Plan, Planner
from orchestration.pipelines.schema import schema_problems
from orchestration.pipelines.source import SUFFIXES, Source, pointer, read


class PipelineWorkflow(Workflow):
    """A workflow declared by a pipeline file; its version is the file's content hash."""

    def __init__(self, name: str, *, source: Path, content_hash: str, document: Any,
                 **options: Any) -> None:
        self.source_path = source
        self.content_hash = content_hash
        self.document = document
        super().__init__(name, **options)

    def validate(self) -> CompiledWorkflow:
        """The engine's compiled workflow, versioned by the content hash."""
        compiled = super().validate()
        if compiled.version != self.content_hash:
            compiled = dataclasses.replace(compiled, version=self.content_hash)
            with self._lock:
                if self._compiled is not None:
                    self._compiled = compiled
        return compiled


def content_hash(data: Any) -> str:
    """The version of a pipeline: a hash of its content (not of its formatting)."""
    return hashlib.sha256(dumps(data).encode()).hexdigest()[:16]


def load_pipeline(path: str | Path, *, orchestrator: Host | None = None,
                  check_models: bool = True) -> Workflow:
    """Load one pipeline file (JSON or YAML) as a registered :class:`Workflow`.

    Pipelines it routes to that the deployment does not know yet are looked for beside
    it (same folder) and loaded first. Raises :class:`PipelineError` listing every
    problem (JSON pointer, YAML line) before anything is registered. Loading the same
    content again returns the workflow already registered. ``check_models``: a model
    step's model must be in the host's catalogue.
    """
    file = Path(path)
    host = orchestrator or default_host()
    loader = _Loader(host, check_models)
    wanted = loader.add(file)
    loader.add_siblings(file.parent, exclude=file)
    return loader.load([wanted])[0]


def load_pipelines(folder: str | Path, *, orchestrator: Host | None = None,
                   check_models: bool = True) -> list[Workflow]:
    """Load every ``*.json``, ``*.yaml`` and ``*.yml`` file of ``folder`` (not recursive).

    Raises :class:`PipelineError` with the problems of every file if any has one;
    nothing is registered then. ``check_models`` as for :func:`load_pipeline`.
    """
    directory = Path(folder)
    if not directory.is_dir():
        raise PipelineError(str(directory), [Problem("", "no such folder")])
    host = orchestrator or default_host()
    loader = _Loader(host, check_models)
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in SUFFIXES)
    wanted = [loader.add(file) for file in files]
    return loader.load(wanted)


def check_pipeline(path: str | Path, *, orchestrator: Host | None = None) -> list[Problem]:
    """Every problem of a pipeline file (and of the pipelines it routes to), registering
    nothing: what ``orchestrate pipeline validate`` prints."""
    file = Path(path)
    host = orchestrator or default_host()
    loader = _Loader(host)
    wanted = loader.add(file)
    loader.add_siblings(file.parent, exclude=file)
    try:
        loader.load([wanted], dry=True)
    except PipelineError as exc:
        return exc.problems
    return []


def plan_of(path: str | Path, *, orchestrator: Host | None = None) -> Workflow:
    """The pipeline as a workflow on a scratch host (nothing registered): for graphs."""
    file = Path(path)
    loader = _Loader(orchestrator or default_host())
    wanted = loader.add(file)
    loader.add_siblings(file.parent, exclude=file)
    return loader.load([wanted], dry=True)[0]


class _Scratch:
    """A host that registers nothing: the loader declares a pipeline here first."""

    def __init__(self, host: Host, check_models: bool = True) -> None:
        self.settings: Settings = host.settings
        self.workflows: dict[str, Workflow] = dict(host.workflows)
        self.catalogue = getattr(host, "catalogue", None) if check_models else None

    def register(self, workflow: Workflow) -> None:
        self.workflows[workflow.name] = workflow

    def register_step(self, workflow: Workflow, spec: Any) -> None:
        return None


class _File:
    def __init__(self, source: Source) -> None:
        self.source = source
        data = source.data
        name = data.get("pipeline") if isinstance(data, dict) else None
        self.name = name if isinstance(name, str) else None
        self.problems: list[Problem] = list(source.problems)
        if source.data is not None:
            self.problems += schema_problems(source)

    def routes_to(self) -> set[str]:
        steps = self.source.data.get("steps") if isinstance(self.source.data, dict) else None
        targets: set[str] = set()
        for raw in (steps or {}).values() if isinstance(steps, dict) else ():
            if isinstance(raw, dict):
                table = raw.get("routing")
                targets |= {t for t in (table or {}).values() if isinstance(t, str)} \
                    if isinstance(table, dict) else set()
                if isinstance(raw.get("default"), str):
                    targets.add(raw["default"])
        return targets - set(steps or {})


class _Loader:
    def __init__(self, host: Host, check_models: bool = True) -> None:
        self.host = host
        self.check_models = check_models
        self.files: dict[Path, _File] = {}
        self.siblings: dict[str, _File] = {}
        self.folder: Path | None = None
        self.exclude: Path | None = None

    def add(self, path: Path) -> _File:
        file = self.files.get(path.resolve())
        if file is None:
            file = self.files[path.resolve()] = _File(read(path))
        return file

    def add_siblings(self, folder: Path, *, exclude: Path) -> None:
        """Files beside the one loaded: candidates for the pipelines it routes to (read
        only if it routes to a name nothing else provides)."""
        self.folder, self.exclude = folder, exclude.resolve()

    def sibling(self, name: str) -> _File | None:
        if self.folder is not None:
            folder, self.folder = self.folder, None
            for path in sorted(folder.iterdir()) if folder.is_dir() else ():
                if path.suffix.lower() in SUFFIXES and path.resolve() != self.exclude:
                    found = _File(read(path))
                    if found.name and found.name not in self.siblings:
                        self.siblings[found.name] = found
        return self.siblings.get(name)

    def load(self, wanted: list[_File], *, dry: bool = False) -> list[Workflow]:
        files = self._closure(wanted)
        problems = self._duplicates(files)
        order = self._order(files, problems)
        scratch = _Scratch(self.host, self.check_models)
        built: dict[str, Workflow] = {}
        plans: dict[int, Plan] = {}
        for file in order:
            if file.problems:
                problems += [_in(file, p, wanted) for p in file.problems + _more(file, scratch)]
                continue
            existing = self.host.workflows.get(file.name or "")
            if existing is not None and not dry:
                if getattr(existing, "content_hash", None) == content_hash(file.source.data):
                    built[existing.name] = existing
                    continue
                origin = getattr(existing, "source_path", None)
                problems.append(_in(file, file.source.problem(
                    "/pipeline", f"a workflow named {file.name!r} is already registered "
                    f"({f'from {origin}' if origin else 'by Python code'})"), wanted))
                continue
            plan, workflow = _declare(file, scratch, self._finder(scratch, built))
            plans[id(file)] = plan
            problems += [_in(file, p, wanted) for p in plan.problems]
            if workflow is not None:
                built[workflow.name] = workflow
        if problems:
            raise PipelineError(str(wanted[0].source.path) if len(wanted) == 1 else
                                str(wanted[0].source.path.parent), problems)
        if dry:
            return [built[file.name] for file in wanted if file.name]
        real: dict[str, Workflow] = {}
        for file in order:
            assert file.name is not None
            if id(file) not in plans:  # registered already with this content
                real[file.name] = built[file.name]
                continue
            plan, workflow = _declare(file, self.host, self._finder(self.host, real),
                                      plan=plans[id(file)])
            if workflow is None:  # the scratch run passed: the engine's checks agree
                raise PipelineError(str(file.source.path), plan.problems)
            real[file.name] = workflow
        return [real[file.name] for file in wanted if file.name]

    def _finder(self, host: Any, built: Mapping[str, Workflow]) -> Any:
        def find(name: str) -> Workflow | None:
            found = built.get(name) or host.workflows.get(name)
            return found if isinstance(found, Workflow) else None
        return find

    def _closure(self, wanted: Iterable[_File]) -> list[_File]:
        """The wanted files and the sibling pipelines they route to (transitively)."""
        files = list(dict.fromkeys(wanted))
        names = {f.name for f in self.files.values()}
        index = 0
        while index < len(files):
            for target in sorted(files[index].routes_to()):
                if target in names or target in self.host.workflows:
                    continue
                sibling = self.sibling(target)
                if sibling is not None and sibling not in files:
                    files.append(sibling)
                    names.add(target)
            index += 1
        return files

    def _duplicates(self, files: list[_File]) -> list[Problem]:
        seen: dict[str, _File] = {}
        problems = []
        for file in files:
            if file.name is None:
                continue
            other = seen.get(file.name)
            if other is not None:
                problems.append(_in(file, file.source.problem(
                    "/pipeline", f"pipeline {file.name!r} is also declared in "
                    f"{other.source.path}"), []))
            seen[file.name] = file
        return problems

    def _order(self, files: list[_File], problems: list[Problem]) -> list[_File]:
        """Files after the pipelines they route to; a cycle of routes is a problem."""
        by_name = {f.name: f for f in files if f.name}
        order: list[_File] = []
        visiting: list[_File] = []

        def visit(file: _File) -> None:
            if file in order:
                return
            if file in visiting:
                cycle = [f.name or "?" for f in visiting[visiting.index(file):]] + [file.name]
                problems.append(_in(file, file.source.problem(
                    "/steps", f"pipelines route to each other in a cycle: "
                    f"{' -> '.join(map(str, cycle))}"), []))
                return
            visiting.append(file)
            for target in sorted(file.routes_to()):
                if target in by_name:
                    visit(by_name[target])
            visiting.pop()
            order.append(file)

        for file in files:
            visit(file)
        return order


def _more(file: _File, scratch: _Scratch) -> list[Problem]:
    """The semantic problems of a file the schema rejected, where the schema said nothing
    (a part it rejected is not looked at twice)."""
    if file.source.data is None:
        return []
    try:
        found = Planner(file.source, lambda name: scratch.workflows.get(name),
                        _model_names(scratch.catalogue)).run().problems
    except Exception:  # a shape the planner cannot read: the schema problems say why
        return []
    broken = [p.pointer for p in file.problems]
    return [p for p in found if not any(p.pointer == b or p.pointer.startswith(b + "/")
                                        for b in broken)]


def _model_names(catalogue: Any) -> Mapping[str, Any] | None:
    """What a model step may name: the catalogue's models and routes (None: unchecked)."""
    models = getattr(catalogue, "models", None)
    if not isinstance(models, Mapping):
        return None
    routes = getattr(catalogue, "routes", None)
    return {**models, **routes} if isinstance(routes, Mapping) else models


def _in(file: _File, problem: Problem, wanted: list[_File]) -> Problem:
    """A problem of another file than the one asked for names that file."""
    if len(wanted) == 1 and file is wanted[0]:
        return problem
    return dataclasses.replace(problem, file=str(file.source.path))


def _declare(file: _File, host: Any, find: Any,
             plan: Plan | None = None) -> tuple[Plan, Workflow | None]:
    """Plan (unless given) and declare one pipeline on ``host``; problems in the plan."""
    source = file.source
    if plan is None:
        plan = Planner(source, find, _model_names(getattr(host, "catalogue", None))).run()
        if plan.problems:
            return plan, None
    else:
        # The real declaration builds fresh callables bound to the real host's workflows.
        plan = Planner(source, find, None).run()
    doc = source.data
    try:
        workflow = PipelineWorkflow(
            plan.name, source=source.path, content_hash=content_hash(doc), document=doc,
            inputs=plan.inputs if "inputs" in doc else [], queue=plan.queue,
            budget=plan.budget, orchestrator=host)
    except OrchestrationError as exc:
        plan.problems.append(source.problem("/pipeline", str(exc)))
        return plan, None
    for step in plan.steps:
        try:
            workflow.task(step.fn, **step.options)
        except OrchestrationError as exc:
            plan.problems.append(source.problem(_option_pointer(step.at, str(exc)), str(exc)))
    if not plan.problems:
        _starters(workflow, doc, source, plan)
    if not plan.problems:
        try:
            compiled = workflow.validate()
        except OrchestrationError as exc:
            plan.problems.append(source.problem(_culprit(str(exc), doc), str(exc)))
        else:
            _check_actions(compiled, doc, source, plan)
    return plan, (workflow if not plan.problems else None)


def _check_actions(compiled: CompiledWorkflow, doc: dict[str, Any], source: Source,
                   plan: Plan) -> None:
    """A trigger's ``action`` is a step the run starts with (it depends on nothing)."""
    for name, raw in (doc.get("triggers") or {}).items():
        bound = compiled.steps.get(raw.get("action") or "")
        if bound is not None and bound.upstream:
            plan.problems.append(source.problem(
                pointer("triggers", name, "action"),
                f"step {bound.spec.name!r} depends on {', '.join(sorted(bound.upstream))}; "
                "a run starts with the steps that depend on nothing"))


def _starters(workflow: Workflow, doc: dict[str, Any], source: Source, plan: Plan) -> None:
    """Declare the file's triggers and schedules on the workflow."""
    for name, raw in (doc.get("triggers") or {}).items():
        at = pointer("triggers", name)
        try:
            workflow.on_event(raw["event"], inputs=raw.get("inputs"), filter=raw.get("filter"),
                              dedupe=raw.get("dedupe"), name=name,
                              priority=raw.get("priority"))
        except OrchestrationError as exc:
            plan.problems.append(source.problem(at, str(exc)))
        action = raw.get("action")
        steps = doc.get("steps") or {}
        if action is not None and action not in steps:
            plan.problems.append(source.problem(at + "/action", f"{action!r} is no step of "
                                                f"this pipeline (steps: {', '.join(steps)})"))
    for name, raw in (doc.get("schedules") or {}).items():
        try:
            workflow.schedule(raw["cron"], inputs=raw.get("inputs"),
                              overlap=raw.get("overlap", "skip"), name=name,
                              priority=raw.get("priority"))
        except OrchestrationError as exc:
            plan.problems.append(source.problem(pointer("schedules", name), str(exc)))


def _option_pointer(at: str, message: str) -> str:
    """Where in a step an engine error points: the option it names, else the step."""
    for option, key in (("on_error", "errors"), ("fallback", "fallback"), ("queue", "queue"),
                        ("timeout", "timeout"), ("backoff", "backoff"), ("cache", "cache"),
                        ("min_success", "min_success"), ("max_cost", "max_cost"),
                        ("gate", "gate"), ("map", "map"), ("model", "model")):
        if option in message:
            return f"{at}/{key}"
    return at


def _culprit(message: str, doc: dict[str, Any]) -> str:
    """The step (or trigger) a workflow-level error names, as a pointer."""
    for section in ("triggers", "schedules", "steps"):
        for name in doc.get(section) or {}:
            if f"'{name}'" in message or f".{name}'" in message:
                return pointer(section, name)
    return "/steps"
