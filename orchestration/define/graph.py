"""Graph analysis for workflow DAGs: validation, ordering and series-parallel decomposition.

A workflow is ``deps``: a mapping from each step name to the names it depends on. The keys are
all the steps, in declaration order, and that order breaks every tie, so results are
deterministic. Nothing here imports Celery or does I/O.

Celery canvas can only express series (chains) and parallel (groups) composition, so the
compiler asks :func:`decompose` for a :data:`Plan` tree. A DAG is series-parallel when its
transitive closure equals that of some Series/Parallel expression (redundant transitive edges
such as a->b, b->c, a->c are fine); such DAGs decompose exactly. Any other DAG contains an "N"
(a->c, a->d, b->d: c needs a, d needs a and b, and c must not wait for b), which no
series-parallel plan can express. For those the compiler adds the fewest waits it can at each
cut and reports them: where no cut is exact it cuts a topological order at the prefix that
adds the fewest waits (ties: the shortest resulting critical path, then the earliest cut), so
dependencies are always respected and the only cost is extra synchronisation, listed in
:attr:`Decomposition.added_waits`. The choice is greedy per cut, not a global optimum.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import TypeAlias

#: Step name -> the names it depends on. Keys are all the steps, in declaration order.
Deps: TypeAlias = Mapping[str, Collection[str]]


@dataclass(frozen=True)
class Node:
    """A leaf of a plan: one workflow step."""

    name: str


@dataclass(frozen=True)
class Series:
    """Parts that run one after another; every step of a part waits for all earlier parts.

    Invariant (checked): at least two parts, none of which is itself a ``Series``.
    """

    parts: tuple[Plan, ...]

    def __post_init__(self) -> None:
        if len(self.parts) < 2 or any(isinstance(p, Series) for p in self.parts):
            raise ValueError("Series needs >= 2 parts, none of them a Series")


@dataclass(frozen=True)
class Parallel:
    """Parts that run independently of each other.

    Invariant (checked): at least two parts, none of which is itself a ``Parallel``.
    """

    parts: tuple[Plan, ...]

    def __post_init__(self) -> None:
        if len(self.parts) < 2 or any(isinstance(p, Parallel) for p in self.parts):
            raise ValueError("Parallel needs >= 2 parts, none of them a Parallel")


#: A plan tree; the compiler maps Series to chains and Parallel to groups.
Plan: TypeAlias = Node | Series | Parallel


@dataclass(frozen=True)
class Decomposition:
    """The result of :func:`decompose`.

    ``exact`` is True iff the plan makes no step wait for one it does not (transitively) depend
    on. ``added_waits`` lists every such extra wait as ``(a, b)`` ("b waits for a"), sorted;
    it is empty iff ``exact``.
    """

    plan: Plan
    exact: bool
    added_waits: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Graph:
    names: tuple[str, ...]
    preds: tuple[tuple[int, ...], ...]  # direct dependencies, by declaration index
    succs: tuple[tuple[int, ...], ...]
    order: tuple[int, ...]  # stable topological order
    anc: tuple[int, ...]  # bitset of transitive predecessors
    desc: tuple[int, ...]  # bitset of transitive successors


@dataclass(frozen=True)
class _Join:
    kind: type[Series] | type[Parallel]
    count: int


def _edges(deps: Deps) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    names = tuple(deps)
    index = {name: i for i, name in enumerate(names)}
    for name in names:
        # A bare string is a Collection[str] too, and would silently become its characters.
        if isinstance(deps[name], str):
            raise TypeError(f"dependencies of {name!r} must be a collection of names, not a str")
    # Sorting by declaration index makes set-valued dependencies deterministic.
    preds = tuple(tuple(sorted({index[d] for d in deps[n] if d in index})) for n in names)
    return names, preds


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _mask(members: Sequence[int]) -> int:
    mask = 0
    for v in members:
        mask |= 1 << v
    return mask


def find_cycle(deps: Deps) -> list[str] | None:
    """Return one dependency cycle as ``[a, b, ..., a]``, or None if the graph is acyclic.

    Each name is a dependency of the next (execution order), so ``" -> ".join(cycle)`` reads
    like the workflow's arrows; a self-dependency gives ``[a, a]``. The cycle starts at its
    earliest-declared step. Names that are not steps are ignored.
    """
    names, preds = _edges(deps)
    state = [0] * len(names)  # 0 unseen, 1 on the current path, 2 finished
    for root in range(len(names)):
        if state[root]:
            continue
        state[root] = 1
        path, pending = [root], [iter(preds[root])]
        while path:  # iterative DFS: 1,000-step chains would overflow Python's stack
            nxt = next(pending[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                pending.pop()
            elif state[nxt] == 1:
                # path[i + 1] depends on path[i]; reverse for execution order.
                cycle = path[path.index(nxt) :][::-1]
                start = cycle.index(min(cycle))
                cycle = cycle[start:] + cycle[:start]
                return [names[v] for v in (*cycle, cycle[0])]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                pending.append(iter(preds[nxt]))
    return None


def unknown_dependencies(deps: Deps) -> dict[str, list[str]]:
    """Map each step that depends on non-steps to those names (sorted); empty if none."""
    unknown = {name: sorted({d for d in ds if d not in deps}) for name, ds in deps.items()}
    return {name: ds for name, ds in unknown.items() if ds}


def _build(deps: Deps) -> _Graph:
    names, preds = _edges(deps)
    succ_lists: list[list[int]] = [[] for _ in names]
    for v, ps in enumerate(preds):
        for p in ps:
            succ_lists[p].append(v)
    succs = tuple(tuple(s) for s in succ_lists)
    missing = [len(ps) for ps in preds]
    ready = [v for v, m in enumerate(missing) if m == 0]  # ascending, hence already a heap
    order: list[int] = []
    while ready:
        v = heapq.heappop(ready)
        order.append(v)
        for s in succs[v]:
            missing[s] -= 1
            if missing[s] == 0:
                heapq.heappush(ready, s)
    if len(order) < len(names):
        raise ValueError(f"dependency cycle: {' -> '.join(find_cycle(deps) or ())}")
    anc, desc = [0] * len(names), [0] * len(names)
    for v in order:
        for p in preds[v]:
            anc[v] |= anc[p] | 1 << p
    for v in reversed(order):
        for s in succs[v]:
            desc[v] |= desc[s] | 1 << s
    return _Graph(names, preds, succs, tuple(order), tuple(anc), tuple(desc))


def topological_order(deps: Deps) -> list[str]:
    """Return the steps so that each comes after its dependencies.

    Stable: whenever several steps are ready, the earliest-declared goes first. Names that are
    not steps are ignored. Raises ValueError naming a cycle if there is one.
    """
    g = _build(deps)
    return [g.names[v] for v in g.order]


def ancestors(deps: Deps) -> dict[str, frozenset[str]]:
    """Map each step to everything it depends on, directly or transitively.

    Names that are not steps are ignored. Raises ValueError naming a cycle if there is one.
    """
    g = _build(deps)
    return {name: frozenset(g.names[a] for a in _bits(g.anc[v])) for v, name in enumerate(g.names)}


def _components(g: _Graph, members: tuple[int, ...]) -> list[tuple[int, ...]]:
    # S is convex (see below), so steps joined by a path are joined by a comparability too:
    # growing by whole ancestor/descendant bitsets finds a component in a few rounds.
    left, comps = _mask(members), []
    while left:
        # The lowest bit is the earliest-declared step, which orders the components.
        comp, frontier = 0, left & -left
        while frontier:
            comp |= frontier
            reach = 0
            for v in _bits(frontier):
                reach |= g.anc[v] | g.desc[v]
            frontier = reach & left & ~comp
        left &= ~comp
        comps.append(comp)
    if len(comps) == 1:
        return [members]
    # Filtering members (not the bits) keeps each component in topological order.
    return [tuple(v for v in members if comp >> v & 1) for comp in comps]


def _cut_costs(g: _Graph, members: tuple[int, ...]) -> list[int]:
    # costs[k]: added waits if members[:k] runs before members[k:]. Moving v across the cut
    # drops the pairs (a, v) with v not needing a and adds (v, b) with b not needing v.
    before, after, cost, costs = 0, _mask(members), 0, [0]
    for v in members[:-1]:
        after ^= 1 << v
        cost += (after & ~g.desc[v]).bit_count() - (before & ~g.anc[v]).bit_count()
        before |= 1 << v
        costs.append(cost)
    return costs


def _best_inexact_cut(g: _Graph, members: tuple[int, ...], costs: list[int]) -> int:
    # Ties on added waits are broken by the longest chain on each side of the cut (the best the
    # two halves can achieve), so that e.g. the N a->c, a->d, b->d becomes (a | b) ; (c | d).
    cheapest = min(costs[1:])
    ties = [k for k in range(1, len(members)) if costs[k] == cheapest]
    if len(ties) == 1:
        return ties[0]
    # Members come in topological order, so a missing key is a step outside S (chain length 0).
    depth: dict[int, int] = {}
    for v in members:
        depth[v] = 1 + max((depth.get(p, 0) for p in g.preds[v]), default=0)
    height: dict[int, int] = {}
    for v in reversed(members):
        height[v] = 1 + max((height.get(s, 0) for s in g.succs[v]), default=0)
    head = list(accumulate((depth[v] for v in members), max))
    tail = list(accumulate((height[v] for v in reversed(members)), max))[::-1]
    return min(ties, key=lambda k: (head[k - 1] + tail[k], k))


# Why the cuts below are safe and, on series-parallel DAGs, exact.
#
# Every set S we split is convex (a path between two members stays inside S): the whole graph
# is, weak components of a convex set are, and so are both sides of a prefix cut (a path from
# a1 to a2 in the prefix only visits nodes that precede a2). So reachability restricted to S is
# the global reachability, and global bitsets can be reused at every level.
#
# Safety: a prefix A of a topological order of S is closed under dependencies (a dependency of
# a node precedes it), so running A before S\A never runs a step before a dependency; edges
# within each side are handled recursively, and weak components share no edges. Every pair
# (a, b) with b needing a is thus separated, at some level, by a Series cut with a first.
# Every pair of steps is separated by exactly one split, so the pairs recorded at inexact cuts
# are exactly the plan's waits minus the DAG's closure, each once.
#
# Exactness: series-parallel orders are exactly the N-free orders (Valdes, Tarjan & Lawler,
# 1982), and N-freeness survives restriction to any subset. An N-free S with |S| >= 2 is either
# disconnected (top-level Parallel: step 2 splits it) or has a cut where everything after needs
# everything before (top-level Series), which is a prefix of *every* topological order because
# it is closed under dependencies; cost 0 finds it. Both splits add no waits and leave N-free
# sides, so by induction no inexact cut is ever taken. Exact cuts are order-independent, and
# splitting at all of them at once equals taking the smallest one repeatedly (the rest of S
# stays connected, and the next exact cut of S is the smallest exact cut of the rest). It also
# keeps a 1,000-step chain one level deep.
def _split(
    g: _Graph, members: tuple[int, ...], added: list[tuple[int, int]]
) -> tuple[type[Series] | type[Parallel], list[tuple[int, ...]]]:
    components = _components(g, members)
    if len(components) > 1:
        return Parallel, components
    costs = _cut_costs(g, members)
    bounds = [k for k in range(1, len(members)) if costs[k] == 0]
    if not bounds:
        k = _best_inexact_cut(g, members, costs)
        before = _mask(members[:k])
        added.extend((a, b) for b in members[k:] for a in _bits(before & ~g.anc[b]))
        bounds = [k]
    bounds = [0, *bounds, len(members)]
    return Series, [members[i:j] for i, j in pairwise(bounds)]


def _join(kind: type[Series] | type[Parallel], parts: list[Plan]) -> Plan:
    flat: list[Plan] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, kind) else (part,))
    return kind(tuple(flat))


def decompose(deps: Deps) -> Decomposition:
    """Turn a workflow DAG into a series-parallel plan, adding as few waits as it can.

    Exact (``added_waits == ()``) for series-parallel DAGs; see the module docstring for the
    rest. Parallel parts come in declaration order of their first step. Raises ValueError for
    an empty workflow, unknown dependencies, or a cycle.
    """
    if not deps:
        raise ValueError("a workflow needs at least one step")
    if unknown := unknown_dependencies(deps):
        missing = "; ".join(f"{name} needs {', '.join(ds)}" for name, ds in unknown.items())
        raise ValueError(f"unknown dependencies: {missing}")
    g = _build(deps)
    added: list[tuple[int, int]] = []
    results: list[Plan] = []
    # An explicit stack instead of recursion: plans of non-series-parallel DAGs can nest deeply.
    todo: list[tuple[int, ...] | _Join] = [g.order]
    while todo:
        item = todo.pop()
        if isinstance(item, _Join):
            parts = results[len(results) - item.count :]
            del results[len(results) - item.count :]
            results.append(_join(item.kind, parts))
        elif len(item) == 1:
            results.append(Node(g.names[item[0]]))
        else:
            kind, pieces = _split(g, item, added)
            todo.append(_Join(kind, len(pieces)))
            todo.extend(reversed(pieces))
    waits = tuple(sorted((g.names[a], g.names[b]) for a, b in added))
    return Decomposition(results[0], not waits, waits)


def plan_nodes(plan: Plan) -> list[str]:
    """Return the step names of a plan's leaves, in plan order."""
    names: list[str] = []
    stack = [plan]
    while stack:
        part = stack.pop()
        if isinstance(part, Node):
            names.append(part.name)
        else:
            stack.extend(reversed(part.parts))
    return names


def iter_waits(plan: Plan) -> set[tuple[str, str]]:
    """Return every ``(a, b)`` such that running the plan makes b wait for a, transitively."""
    waits: set[tuple[str, str]] = set()
    stack = [plan]
    while stack:
        part = stack.pop()
        if isinstance(part, Node):
            continue
        stack.extend(part.parts)
        if isinstance(part, Series):
            earlier: list[str] = []
            for sub in part.parts:
                leaves = plan_nodes(sub)
                waits.update((a, b) for a in earlier for b in leaves)
                earlier.extend(leaves)
    return waits
