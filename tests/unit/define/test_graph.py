"""Tests for orchestration.define.graph: ordering, validation and series-parallel decomposition."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestration.define.graph import (
    Decomposition,
    Node,
    Parallel,
    Plan,
    Series,
    ancestors,
    decompose,
    find_cycle,
    iter_waits,
    plan_nodes,
    topological_order,
    unknown_dependencies,
)

Deps = Mapping[str, Collection[str]]

# No example database: keeps test runs from writing a .hypothesis directory into the repo.
fast = settings(max_examples=150, deadline=None, database=None)


def closure(deps: Deps) -> set[tuple[str, str]]:
    """(a, b) for every b that depends on a, computed naively, independently of the module."""
    pairs = {(a, b) for b, ds in deps.items() for a in ds}
    while True:
        extra = {(a, c) for a, b in pairs for b2, c in pairs if b == b2} - pairs
        if not extra:
            return pairs
        pairs |= extra


def check_shape(plan: Plan) -> None:
    if isinstance(plan, Node):
        return
    assert len(plan.parts) >= 2
    assert not any(isinstance(p, type(plan)) for p in plan.parts)
    for part in plan.parts:
        check_shape(part)


def check(deps: Deps) -> Decomposition:
    """Decompose and assert every invariant that holds for any DAG."""
    d = decompose(deps)
    check_shape(d.plan)
    nodes = plan_nodes(d.plan)
    assert sorted(nodes) == sorted(deps) and len(set(nodes)) == len(nodes)
    waits, needed = iter_waits(d.plan), closure(deps)
    assert needed <= waits
    assert set(d.added_waits) == waits - needed
    assert list(d.added_waits) == sorted(set(d.added_waits))
    assert d.exact == (d.added_waits == ())
    return d


def S(*parts: Plan | str) -> Series:
    return Series(tuple(Node(p) if isinstance(p, str) else p for p in parts))


def P(*parts: Plan | str) -> Parallel:
    return Parallel(tuple(Node(p) if isinstance(p, str) else p for p in parts))


# --- examples -------------------------------------------------------------------------------


def test_single_node() -> None:
    assert check({"a": []}) == Decomposition(Node("a"), True, ())


def test_chain() -> None:
    d = check({"a": [], "b": ["a"], "c": ["b"]})
    assert d.plan == S("a", "b", "c") and d.exact


def test_diamond() -> None:
    d = check({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    assert d.plan == S("a", P("b", "c"), "d") and d.exact


def test_fan_out_and_join() -> None:
    leaves = [f"leaf{i}" for i in range(50)]
    deps: dict[str, list[str]] = {"root": [], **{leaf: ["root"] for leaf in leaves}}
    deps["join"] = leaves
    d = check(deps)
    assert d.plan == S("root", P(*leaves), "join") and d.exact


def test_uneven_branches() -> None:
    deps = {"a1": [], "a2": ["a1"], "b1": [], "b2": ["b1"], "join": ["a2", "b2"]}
    d = check(deps)
    assert d.plan == S(P(S("a1", "a2"), S("b1", "b2")), "join") and d.exact


def test_independent_components_in_declaration_order() -> None:
    d = check({"z": [], "x": [], "y": ["x"], "w": ["z"], "v": []})
    assert d.plan == P(S("z", "w"), S("x", "y"), "v") and d.exact


def test_redundant_transitive_edge_is_exact() -> None:
    d = check({"a": [], "b": ["a"], "c": ["a", "b"]})
    assert d.plan == S("a", "b", "c") and d.exact
    d = check({"a": [], "b": ["a"], "c": ["a"], "d": ["a", "b", "c"], "e": ["a", "d"]})
    assert d.plan == S("a", P("b", "c"), "d", "e") and d.exact


def test_set_valued_dependencies_are_deterministic() -> None:
    d = check({"a": set(), "b": set(), "c": {"b", "a"}})
    assert d.plan == S(P("a", "b"), "c")


def test_n_shape_is_not_series_parallel() -> None:
    deps = {"a": [], "b": [], "c": ["a"], "d": ["a", "b"]}
    d = check(deps)
    assert not d.exact
    assert d.added_waits == (("b", "c"),)
    assert d.plan == S(P("a", "b"), P("c", "d"))


def test_cycle_detection() -> None:
    deps = {"a": ["c"], "b": ["a"], "c": ["b"], "d": []}
    assert find_cycle(deps) == ["a", "b", "c", "a"]  # each name is needed by the next
    with pytest.raises(ValueError, match="a -> b -> c -> a"):
        topological_order(deps)
    with pytest.raises(ValueError, match="cycle"):
        decompose(deps)
    assert find_cycle({"a": [], "b": ["a"]}) is None


def test_self_loop() -> None:
    assert find_cycle({"a": [], "b": ["b"]}) == ["b", "b"]
    with pytest.raises(ValueError, match="b -> b"):
        decompose({"a": [], "b": ["b"]})


def test_unknown_dependencies() -> None:
    deps = {"a": ["ghost", "b"], "b": [], "c": ["phantom", "a", "ghost"]}
    assert unknown_dependencies(deps) == {"a": ["ghost"], "c": ["ghost", "phantom"]}
    assert unknown_dependencies({"a": [], "b": ["a"]}) == {}
    with pytest.raises(ValueError, match="phantom"):
        decompose(deps)


def test_empty_workflow() -> None:
    with pytest.raises(ValueError):
        decompose({})


def test_bare_string_dependencies_are_rejected() -> None:
    with pytest.raises(TypeError):
        decompose({"a": [], "b": "a"})


def test_topological_order_is_stable_and_ancestors_are_transitive() -> None:
    deps = {"c": ["b"], "a": [], "b": [], "d": ["a"]}
    assert topological_order(deps) == ["a", "b", "c", "d"]
    assert ancestors({"a": [], "b": ["a"], "c": ["b"]}) == {
        "a": frozenset(),
        "b": frozenset({"a"}),
        "c": frozenset({"a", "b"}),
    }


def test_plan_invariants_are_enforced() -> None:
    with pytest.raises(ValueError):
        Series((Node("a"),))
    with pytest.raises(ValueError):
        Parallel((Node("a"), P("b", "c")))


def test_large_chain() -> None:
    names = [f"s{i}" for i in range(1000)]
    deps = {name: [names[i - 1]] if i else [] for i, name in enumerate(names)}
    d = decompose(deps)
    assert d.exact and d.plan == Series(tuple(Node(n) for n in names))


def test_large_fan_out() -> None:
    leaves = [f"leaf{i}" for i in range(500)]
    deps: dict[str, list[str]] = {"root": [], **{leaf: ["root"] for leaf in leaves}}
    deps["join"] = leaves
    d = decompose(deps)
    assert d.exact and d.plan == S("root", P(*leaves), "join")


# --- properties -----------------------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """Random DAGs: edges only go from lower to higher index; declaration order is shuffled."""
    n = draw(st.integers(1, 12))
    density = draw(st.sampled_from([0.15, 0.3, 0.6]))
    edges = {j: [i for i in range(j) if draw(st.floats(0, 1)) < density] for j in range(n)}
    order = draw(st.permutations(range(n)))
    return {f"n{j}": [f"n{i}" for i in edges[j]] for j in order}


@fast
@given(dags())
def test_random_dags_are_respected(deps: dict[str, list[str]]) -> None:
    check(deps)
    order = topological_order(deps)
    assert all(order.index(a) < order.index(b) for a, b in closure(deps))
    assert {(a, b) for b, anc in ancestors(deps).items() for a in anc} == closure(deps)
    assert find_cycle(deps) is None


@fast
@given(dags(), st.data())
def test_random_cycles_are_found(deps: dict[str, list[str]], data: st.DataObject) -> None:
    pairs = sorted(closure(deps))
    a, b = data.draw(st.sampled_from(pairs)) if pairs else ("n0", "n0")
    deps[a] = [*deps[a], b]  # b already depends on a, directly or not
    cycle = find_cycle(deps)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert all(x in deps[y] for x, y in itertools.pairwise(cycle))
    with pytest.raises(ValueError, match="cycle"):
        decompose(deps)


Expr = str | tuple[str, list["Expr"]]


def sp_exprs() -> st.SearchStrategy[Expr]:
    return st.recursive(
        st.just("leaf"),
        lambda kids: st.tuples(st.sampled_from(["S", "P"]), st.lists(kids, min_size=2, max_size=3)),
        max_leaves=14,
    )


def realise(expr: Expr, deps: dict[str, list[str]]) -> tuple[list[str], list[str], Plan]:
    """Give the expression's leaves fresh names in deps; return its sources, sinks and plan."""
    if isinstance(expr, str):
        name = f"t{len(deps)}"
        deps[name] = []
        return [name], [name], Node(name)
    kind, kids = expr
    built = [realise(kid, deps) for kid in kids]
    plans = [b[2] for b in built]
    if kind == "P":
        flat = [q for p in plans for q in (p.parts if isinstance(p, Parallel) else (p,))]
        return (
            [x for b in built for x in b[0]],
            [x for b in built for x in b[1]],
            Parallel(tuple(flat)),
        )
    for (_, sinks, _), (sources, _, _) in itertools.pairwise(built):
        for source in sources:
            deps[source] += sinks
    flat = [q for p in plans for q in (p.parts if isinstance(p, Series) else (p,))]
    return built[0][0], built[-1][1], Series(tuple(flat))


def canonical(plan: Plan) -> object:
    """Plans equal up to the order of parallel parts map to the same value."""
    if isinstance(plan, Node):
        return plan.name
    parts = [canonical(p) for p in plan.parts]
    return ("S", tuple(parts)) if isinstance(plan, Series) else ("P", frozenset(parts))


@fast
@given(sp_exprs(), st.data())
def test_series_parallel_dags_decompose_exactly(expr: Expr, data: st.DataObject) -> None:
    built: dict[str, list[str]] = {}
    _, _, expected = realise(expr, built)
    # Redundant transitive edges keep the DAG series-parallel.
    for a, b in sorted(closure(built)):
        if data.draw(st.booleans()) and a not in built[b]:
            built[b].append(a)
    order = data.draw(st.permutations(sorted(built)))
    deps = {name: built[name] for name in order}
    d = check(deps)
    assert d.exact
    assert iter_waits(d.plan) == closure(deps)
    assert canonical(d.plan) == canonical(expected)
