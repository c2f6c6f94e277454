"""Local scikit-learn models that classify support tickets by category and urgency.

Both models are TF-IDF (word 1-2 grams plus character 3-5 grams, so typos and inflections
still match) feeding a linear SVM whose scores are calibrated into probabilities. They are
trained in-process from the shipped ``data/training.jsonl`` the first time they are used;
training takes a fraction of a second, so nothing is cached on disk or pickled and no network
access is ever needed.

Typical use::

    category = predict_category(text)
    urgency = predict_urgency(text, category.label)

The urgency model reads ``"<category> | <text>"``: it was trained on the true category and at
run time sees the predicted one, so a wrong category can drag urgency down with it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

__all__ = [
    "Prediction",
    "TextClassifier",
    "category_model",
    "load_sample_tickets",
    "load_training_tickets",
    "predict_category",
    "predict_urgency",
    "urgency_input",
    "urgency_model",
]

_DATA_PACKAGE: Final = "tasks.support.data"
TRAINING_FILE: Final = "training.jsonl"
SAMPLE_FILE: Final = "sample_tickets.jsonl"

Ticket = dict[str, Any]
InputBuilder = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True, slots=True)
class Prediction:
    """One model decision: the winning ``label`` and its probability in ``[0, 1]``."""

    label: str
    confidence: float


def _read_jsonl(name: str) -> list[Ticket]:
    # importlib.resources keeps this working when the package is installed as a wheel/zip.
    text = resources.files(_DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_training_tickets() -> list[Ticket]:
    """Return the shipped labelled training tickets (``text``, ``category``, ``urgency``)."""
    return _read_jsonl(TRAINING_FILE)


def load_sample_tickets(limit: int | None = None) -> list[Ticket]:
    """Return the demo batch from ``sample_tickets.jsonl``, optionally only the first ``limit``.

    Each ticket has ``ticket_id`` (int, from 10001), ``text``, and the reference ``category``
    and ``urgency`` labels, which callers can use to score the models.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    tickets = _read_jsonl(SAMPLE_FILE)
    return tickets if limit is None else tickets[:limit]


def urgency_input(text: str, category: str) -> str:
    """Return the text the urgency model expects: the category, a separator, then the ticket."""
    return f"{category} | {text}"


def _text_only(ticket: Mapping[str, Any]) -> str:
    return str(ticket["text"])


def _category_and_text(ticket: Mapping[str, Any]) -> str:
    return urgency_input(str(ticket["text"]), str(ticket["category"]))


def _build_pipeline() -> Any:
    features = FeatureUnion(
        [
            (
                "words",
                TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            ),
            # Character n-grams inside word boundaries survive typos like "intterface".
            (
                "chars",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2
                ),
            ),
        ]
    )
    # A calibrated LinearSVC matches logistic regression's accuracy here at a fraction of its
    # fit time. liblinear shuffles its coordinate order, so the seed is fixed; the calibration
    # folds are unshuffled. Together they make two fresh models agree bit for bit.
    classifier = CalibratedClassifierCV(LinearSVC(C=0.3, random_state=0), cv=3)
    return Pipeline([("features", features), ("classifier", classifier)])


class TextClassifier:
    """A TF-IDF + calibrated linear-SVM text classifier trained lazily on first use.

    ``label_field`` names the ticket key to learn (``"category"`` or ``"urgency"``);
    ``input_builder`` turns a training ticket into model input and must match how callers
    format text for :meth:`predict`. ``examples`` defaults to the shipped training set.

    Safe to share between threads: the first caller trains under a lock and every other
    caller waits for, then reuses, that one fitted pipeline. ``trainings`` counts fits
    and ``training_seconds`` holds the duration of the last one.
    """

    def __init__(
        self,
        label_field: str,
        *,
        input_builder: InputBuilder = _text_only,
        examples: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.label_field: Final = label_field
        self._input_builder = input_builder
        self._examples = examples
        self._lock = threading.Lock()
        self._pipeline: Any | None = None
        self.trainings = 0
        self.training_seconds = 0.0

    @property
    def is_trained(self) -> bool:
        """Whether the model has been fitted yet (never triggers training)."""
        return self._pipeline is not None

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels the model can emit, in sorted order (trains the model if needed)."""
        return tuple(str(label) for label in self._fitted().classes_)

    def predict(self, text: str) -> Prediction:
        """Return the most probable label for ``text`` with its probability."""
        return self.predict_many([text])[0]

    def predict_many(self, texts: Iterable[str]) -> list[Prediction]:
        """Return one :class:`Prediction` per input text, in order (cheaper than a loop)."""
        batch = list(texts)
        if not batch:
            return []
        pipeline = self._fitted()
        probabilities = pipeline.predict_proba(batch)
        classes = pipeline.classes_
        best = probabilities.argmax(axis=1)
        return [
            Prediction(label=str(classes[index]), confidence=float(row[index]))
            for row, index in zip(probabilities, best, strict=True)
        ]

    def _fitted(self) -> Any:
        pipeline = self._pipeline
        if pipeline is not None:
            return pipeline
        with self._lock:
            # Re-check: another thread may have finished training while we waited.
            if self._pipeline is None:
                self._pipeline = self._train()
            return self._pipeline

    def _train(self) -> Any:
        started = time.perf_counter()
        examples = self._examples if self._examples is not None else load_training_tickets()
        texts = [self._input_builder(ticket) for ticket in examples]
        labels = [str(ticket[self.label_field]) for ticket in examples]
        pipeline = _build_pipeline()
        pipeline.fit(texts, labels)
        self.training_seconds = time.perf_counter() - started
        self.trainings += 1
        return pipeline


_registry_lock = threading.Lock()
_category_model: TextClassifier | None = None
_urgency_model: TextClassifier | None = None


def category_model() -> TextClassifier:
    """Return the process-wide category classifier (labels: bug, feature_request, billing, general).

    The instance is created once per process; it trains on its first prediction.
    """
    global _category_model
    if _category_model is None:
        with _registry_lock:
            if _category_model is None:
                _category_model = TextClassifier("category")
    return _category_model


def urgency_model() -> TextClassifier:
    """Return the process-wide urgency classifier (labels: low, medium, high, critical).

    Its input must be built with :func:`urgency_input`; prefer :func:`predict_urgency`.
    """
    global _urgency_model
    if _urgency_model is None:
        with _registry_lock:
            if _urgency_model is None:
                _urgency_model = TextClassifier("urgency", input_builder=_category_and_text)
    return _urgency_model


def predict_category(text: str) -> Prediction:
    """Classify a ticket as bug, feature_request, billing or general."""
    return category_model().predict(text)


def predict_urgency(text: str, category: str) -> Prediction:
    """Score a ticket's urgency as low, medium, high or critical.

    Pass the category you believe the ticket has, normally ``predict_category(text).label``.
    """
    return urgency_model().predict(urgency_input(text, category))
