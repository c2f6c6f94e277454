"""Intent classifiers for semantic routing: labelled example utterances in, scores out.

Two methods, both trained in a fraction of a second on the examples a workflow ships,
nothing downloaded:

- ``similarity``: the examples and the message are embedded with the local
  :class:`~orchestration.retrieval.embedding.LsaEmbedder` (TF-IDF + SVD, fitted on the
  examples); a label's score is the mean cosine similarity of the message to its
  ``NEAREST`` closest examples of that label, clipped to 0..1.
- ``classifier``: logistic regression on TF-IDF features (word 1-2 grams and character
  3-5 grams); a label's score is its predicted probability (the scores sum to 1).

A fitted classifier is kept in memory by whoever trained it (one per process: see
``execute/intents.py``); nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

import numpy as np

from orchestration.define.intents import CLASSIFIER, METHODS, SIMILARITY
from orchestration.errors import RetrievalError
from orchestration.retrieval.embedding import LsaEmbedder

NEAREST: Final = 2  # examples of a label averaged into its similarity score
DIMENSIONS: Final = 96  # of the LSA embedding (capped below the number of examples)


class IntentClassifier(Protocol):
    """A fitted classifier: every label's score (0..1) for one message."""

    labels: tuple[str, ...]

    def scores(self, text: str) -> dict[str, float]:
        """``{label: score}`` for every label, each in 0..1."""


def _pairs(examples: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    texts = [text for label in examples for text in examples[label]]
    labels = [label for label in examples for _ in examples[label]]
    if len(set(labels)) < 2:
        raise RetrievalError(f"an intent classifier needs at least 2 labels, got "
                             f"{sorted(set(labels))}")
    return texts, labels


class SimilarityClassifier:
    """Nearest examples in the LSA space of the examples."""

    def __init__(self, examples: Mapping[str, Sequence[str]], *,
                 dimensions: int = DIMENSIONS, nearest: int = NEAREST) -> None:
        texts, labels = _pairs(examples)
        self.labels = tuple(examples)
        self.nearest = nearest
        self._embedder = LsaEmbedder.fit(texts, dimensions=dimensions)
        vectors = self._embedder.embed(texts)
        self._by_label = {label: vectors[[i for i, own in enumerate(labels) if own == label]]
                          for label in self.labels}

    def scores(self, text: str) -> dict[str, float]:
        """Mean cosine similarity to the label's ``nearest`` closest examples, in 0..1."""
        query = self._embedder.embed([text])[0]
        result: dict[str, float] = {}
        for label, vectors in self._by_label.items():
            similarities = np.sort(vectors @ query)[::-1][:self.nearest]
            result[label] = round(float(np.clip(similarities.mean(), 0.0, 1.0)), 4)
        return result


class LogisticClassifier:
    """Logistic regression on word and character TF-IDF features."""

    def __init__(self, examples: Mapping[str, Sequence[str]], *, seed: int = 0) -> None:
        # Imported when first trained: importing this module costs no scikit-learn import.
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, Pipeline

        texts, labels = _pairs(examples)
        self.labels = tuple(examples)
        features = FeatureUnion([
            ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5),
                                      sublinear_tf=True)),
        ])
        self._model: Any = Pipeline([
            ("features", features),
            ("model", LogisticRegression(C=10.0, max_iter=2000, random_state=seed)),
        ])
        self._model.fit(texts, labels)

    def scores(self, text: str) -> dict[str, float]:
        """Each label's predicted probability."""
        probabilities = self._model.predict_proba([text])[0]
        classes = [str(label) for label in self._model.classes_]
        found = {label: round(float(p), 4) for label, p in zip(classes, probabilities,
                                                                strict=True)}
        return {label: found.get(label, 0.0) for label in self.labels}


def train(method: str, examples: Mapping[str, Sequence[str]]) -> IntentClassifier:
    """A classifier of ``method`` fitted on ``examples`` (label -> utterances)."""
    if method == SIMILARITY:
        return SimilarityClassifier(examples)
    if method == CLASSIFIER:
        return LogisticClassifier(examples)
    raise RetrievalError(f"unknown intent method {method!r} (one of {', '.join(METHODS)})")
