"""A knowledge graph in networkx: entities, typed relations, neighbourhood retrieval.

Entities are nodes (each with the document that describes it, and aliases); relations
are directed edges (each with the document that states it). A question is linked to the
entities it names; their neighbourhood, up to ``hops`` relations away in either
direction, is scored: a named entity 1.0, and each relation followed multiplies by
:data:`NAMED_RELATION` when the question uses one of that relation's words ("owns",
"depends") or by :data:`OTHER_RELATION` otherwise. A document scores the best of the
entities it describes and the relations it states.

The graph is saved as JSON (networkx's node-link format), never pickled.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import networkx as nx

from orchestration.errors import RetrievalError
from orchestration.retrieval.documents import Hit, ranked
from orchestration.retrieval.text import Mentions, terms

NAMED_RELATION: Final = 0.8
OTHER_RELATION: Final = 0.35
FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class Entity:
    """A node: its ``name``, the document describing it, its ``kind``, other names."""

    name: str
    doc_id: str
    kind: str = ""
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Entity:
        """From ``{"name", "doc_id", "kind"?, "aliases"?}``."""
        return cls(name=str(data["name"]), doc_id=str(data["doc_id"]),
                   kind=str(data.get("kind") or ""),
                   aliases=tuple(str(a) for a in data.get("aliases") or ()))


@dataclass(frozen=True, slots=True)
class Relation:
    """An edge: ``subject`` --``relation``--> ``object``, stated in ``doc_id``."""

    subject: str
    relation: str
    object: str
    doc_id: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Relation:
        """From ``{"subject", "relation", "object", "doc_id"}``."""
        return cls(subject=str(data["subject"]), relation=str(data["relation"]),
                   object=str(data["object"]), doc_id=str(data["doc_id"]))


@dataclass
class _Walk:
    """Best score reached per node, and the relations that reached it."""

    nodes: dict[str, float] = field(default_factory=dict)
    edges: dict[tuple[str, str, str], float] = field(default_factory=dict)


class GraphStore:
    """Neighbourhood retrieval over a directed multigraph of entities and relations.

    ``relation_words`` gives, per relation label, the words a question uses for it
    (``{"depends_on": ["depend", "rely"]}``); the label's own words always count.
    """

    def __init__(self, graph: nx.MultiDiGraph, *, relation_words: Mapping[str, Sequence[str]]
                 | None = None, hops: int = 2, name: str = "graph") -> None:
        self.graph = graph
        self.hops = hops
        self.name = name
        self._relation_terms = {
            label: terms(" ".join([label.replace("_", " "), *words]))
            for label, words in (relation_words or {}).items()}
        self._mentions = Mentions({alias: node for node, data in graph.nodes(data=True)
                                   for alias in [node, *data.get("aliases", ())]})

    @classmethod
    def build(cls, entities: Iterable[Entity], relations: Iterable[Relation], *,
              relation_words: Mapping[str, Sequence[str]] | None = None, hops: int = 2,
              name: str = "graph") -> GraphStore:
        """A store from entities and the relations between them (unknown ends refused)."""
        graph = nx.MultiDiGraph()
        for entity in entities:
            graph.add_node(entity.name, doc_id=entity.doc_id, kind=entity.kind,
                           aliases=list(entity.aliases))
        for relation in relations:
            for end in (relation.subject, relation.object):
                if end not in graph:
                    raise RetrievalError(f"graph store: relation {relation} names unknown "
                                         f"entity {end!r}")
            graph.add_edge(relation.subject, relation.object, key=relation.relation,
                           relation=relation.relation, doc_id=relation.doc_id)
        return cls(graph, relation_words=relation_words, hops=hops, name=name)

    def save(self, path: Path) -> None:
        """Write the graph and its relation words as JSON."""
        data = {"format": FORMAT, "hops": self.hops,
                "relation_words": {label: sorted(words)
                                   for label, words in self._relation_terms.items()},
                "graph": nx.node_link_data(self.graph, edges="edges")}
        path.write_text(json.dumps(data, sort_keys=True))

    @classmethod
    def load(cls, path: Path, *, name: str = "graph") -> GraphStore:
        """Read a graph :meth:`save` wrote."""
        try:
            data = json.loads(path.read_text())
            graph = nx.node_link_graph(data["graph"], directed=True, multigraph=True,
                                       edges="edges")
        except (OSError, ValueError, KeyError, nx.NetworkXError) as exc:
            raise RetrievalError(f"graph store: cannot read {path}: {exc}") from exc
        if data.get("format") != FORMAT:
            raise RetrievalError(f"graph store {path}: format {data.get('format')!r}, "
                                 f"expected {FORMAT}")
        return cls(graph, relation_words=data.get("relation_words"), hops=int(data["hops"]),
                   name=name)

    def entities_in(self, question: str) -> list[str]:
        """The entities ``question`` names, by name or alias."""
        return self._mentions.find(question)

    def neighbourhood(self, question: str) -> dict[str, float]:
        """Each entity within ``hops`` of those the question names, with its score."""
        return self._walk(question).nodes

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """Documents describing the named entities, their neighbours and the relations."""
        walk = self._walk(query)
        scored: dict[str, float] = {}
        texts: dict[str, list[str]] = {}
        for node, score in walk.nodes.items():
            doc = str(self.graph.nodes[node]["doc_id"])
            scored[doc] = max(scored.get(doc, 0.0), score)
        for (subject, label, obj), score in walk.edges.items():
            doc = str(self.graph.edges[subject, obj, label]["doc_id"])
            scored[doc] = max(scored.get(doc, 0.0), score)
            texts.setdefault(doc, []).append(f"{subject} {label.replace('_', ' ')} {obj}")
        return ranked(self.name, scored, k, texts={d: "; ".join(t[:3]) for d, t in texts.items()})

    def _walk(self, question: str) -> _Walk:
        walk = _Walk()
        wanted = terms(question)
        frontier = {node: 1.0 for node in self.entities_in(question)}
        walk.nodes.update(frontier)
        for _ in range(self.hops):
            reached: dict[str, float] = {}
            for node, score in frontier.items():
                for subject, obj, label in self._relations_of(node):
                    other = obj if subject == node else subject
                    named = bool(wanted & self._terms_of(label))
                    step = score * (NAMED_RELATION if named else OTHER_RELATION)
                    edge = (subject, label, obj)
                    walk.edges[edge] = max(walk.edges.get(edge, 0.0), step)
                    if step > walk.nodes.get(other, 0.0) and step > reached.get(other, 0.0):
                        reached[other] = step
            walk.nodes.update(reached)
            frontier = reached
        return walk

    def _relations_of(self, node: str) -> list[tuple[str, str, str]]:
        out = [(node, obj, label) for _, obj, label in self.graph.out_edges(node, keys=True)]
        into = [(subject, node, label)
                for subject, _, label in self.graph.in_edges(node, keys=True)]
        return sorted(out + into)

    def _terms_of(self, label: str) -> set[str]:
        cached = self._relation_terms.get(label)
        if cached is None:
            cached = self._relation_terms[label] = terms(label.replace("_", " "))
        return cached
