"""Retrieval on embedded stores: vectors (sqlite-vec), SQL facts, a knowledge graph, fusion.

Domain-free building blocks for RAG steps; nothing here runs a server or downloads a
model. Import from this package (``orchestration`` itself does not, so workflows that
retrieve nothing never load scikit-learn, apsw or networkx).
"""

from orchestration.retrieval.cache import built_once, fingerprint
from orchestration.retrieval.documents import Document, Hit, Retriever, hits_from, ranked
from orchestration.retrieval.embedding import LsaEmbedder
from orchestration.retrieval.facts import Fact, FactStore
from orchestration.retrieval.fusion import reciprocal_rank_fusion
from orchestration.retrieval.graph import Entity, GraphStore, Relation
from orchestration.retrieval.vector import VectorStore

__all__ = [
    # what goes in and comes out
    "Document",
    "Hit",
    "Retriever",
    "hits_from",
    "ranked",
    # the stores
    "VectorStore",
    "LsaEmbedder",
    "FactStore",
    "Fact",
    "GraphStore",
    "Entity",
    "Relation",
    # merging and building
    "reciprocal_rank_fusion",
    "built_once",
    "fingerprint",
]
