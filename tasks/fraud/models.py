"""Seven local fraud models, each answering "how likely is this transaction fraud?".

The models are genuinely different learners over the same engineered features, so they
make different mistakes and a vote between them is worth having:

==============  ===========================================================================
key             model
==============  ===========================================================================
``logreg``      logistic regression on standardised features (linear, well calibrated)
``tree``        one decision tree of depth 6 (axis-aligned rules, like a hand-written policy)
``forest``      a small random forest (40 trees of depth 8)
``boosting``    gradient-boosted trees (80 stages of depth 3)
``bayes``       Gaussian naive Bayes (assumes independent features; fast, crude)
``knn``         k-nearest neighbours (k = 15, distance-weighted) on standardised features
``isolation``   an IsolationForest fitted on genuine transactions only; its anomaly score is
                mapped to a probability by a one-feature logistic regression
==============  ===========================================================================

Each model trains in-process from the shipped ``data/training.jsonl`` the first time it is
used (a fraction of a second; nothing is pickled or cached on disk). Training holds out a
stratified quarter of the set: the model is fitted on the rest, and its accuracy on the
held-out quarter is its ``validation_accuracy``, the weight of its vote. Training is
thread-safe: the first caller trains under the model's own lock and every other caller
waits for, then reuses, that one fitted model.

Typical use::

    probability = fraud_model("forest").predict(transaction)
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import GradientBoostingClassifier, IsolationForest, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from tasks.fraud.data.generate import MERCHANT_CATEGORIES

__all__ = [
    "MODEL_KEYS",
    "MODEL_DESCRIPTIONS",
    "FraudModel",
    "features",
    "feature_matrix",
    "fraud_model",
    "labels",
    "load_sample_transactions",
    "load_training_transactions",
]

_DATA_PACKAGE: Final = "tasks.fraud.data"
TRAINING_FILE: Final = "training.jsonl"
SAMPLE_FILE: Final = "sample_transactions.jsonl"
VALIDATION_SHARE: Final = 0.25
SEED: Final = 0

Transaction = Mapping[str, Any]
Matrix = NDArray[np.float64]


# ------------------------------------------------------------------------------- data


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    text = resources.files(_DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_training_transactions() -> list[dict[str, Any]]:
    """The shipped labelled training transactions."""
    return _read_jsonl(TRAINING_FILE)


def load_sample_transactions(limit: int | None = None) -> list[dict[str, Any]]:
    """The shipped sample batch (ids from 900001), optionally only the first ``limit``."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    rows = _read_jsonl(SAMPLE_FILE)
    return rows if limit is None else rows[:limit]


# --------------------------------------------------------------------------- features

FEATURE_NAMES: Final[tuple[str, ...]] = (
    "log_amount", "log_amount_vs_usual", "country_mismatch", "hour_sin", "hour_cos", "night",
    "log_card_age", "log_velocity_1h", "log_velocity_24h", "device_change", "card_present",
    "log_distance", "failed_auths", *(f"merchant_{name}" for name in MERCHANT_CATEGORIES),
)


def features(transaction: Transaction) -> list[float]:
    """The model input for one transaction (see ``FEATURE_NAMES``); raises on missing fields."""
    amount = float(transaction["amount"])
    usual = float(transaction.get("avg_amount_30d") or amount)
    hour = int(transaction["hour"]) % 24
    angle = 2 * math.pi * hour / 24
    category = str(transaction["merchant_category"])
    return [
        math.log1p(amount),
        math.log((amount + 1) / (usual + 1)),
        float(bool(transaction["country_mismatch"])),
        math.sin(angle),
        math.cos(angle),
        float(hour < 6),
        math.log1p(max(0, int(transaction["card_age_days"]))),
        math.log1p(max(0, int(transaction["velocity_1h"]))),
        math.log1p(max(0, int(transaction["velocity_24h"]))),
        float(bool(transaction["device_change"])),
        float(bool(transaction["card_present"])),
        math.log1p(max(0.0, float(transaction["distance_km"]))),
        float(min(10, int(transaction.get("failed_auths_24h") or 0))),
        *(float(category == name) for name in MERCHANT_CATEGORIES),
    ]


def feature_matrix(transactions: Iterable[Transaction]) -> Matrix:
    """Stack :func:`features` of many transactions into a 2-D array."""
    rows = [features(t) for t in transactions]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))


def labels(transactions: Iterable[Transaction]) -> NDArray[np.int64]:
    """The ``is_fraud`` labels as an array of 0/1."""
    return np.asarray([int(t["is_fraud"]) for t in transactions], dtype=np.int64)


# ----------------------------------------------------------------------------- models


class AnomalyScorer:
    """IsolationForest novelty detector turned into a fraud probability.

    The forest learns what *genuine* transactions look like (it is fitted on the genuine
    rows only); its anomaly score (higher = stranger) is then mapped to a probability by a
    logistic regression fitted on the labelled rows. It never sees fraud patterns as such,
    so it also catches fraud unlike anything in the training set, at the price of
    flagging unusual genuine spending.
    """

    def __init__(self, random_state: int = SEED) -> None:
        self._scaler = StandardScaler()
        self._forest = IsolationForest(n_estimators=150, max_samples=256,
                                       random_state=random_state)
        self._calibration = LogisticRegression()

    def _anomaly(self, x: Matrix) -> Matrix:
        scores = -self._forest.score_samples(self._scaler.transform(x))
        return np.asarray(scores, dtype=np.float64).reshape(-1, 1)

    def fit(self, x: Matrix, y: NDArray[np.int64]) -> AnomalyScorer:
        """Fit the forest on genuine rows, then calibrate its scores on every row."""
        genuine = x[y == 0]
        self._scaler.fit(genuine)
        self._forest.fit(self._scaler.transform(genuine))
        self._calibration.fit(self._anomaly(x), y)
        return self

    def predict_proba(self, x: Matrix) -> Matrix:
        """Two columns, like a classifier: P(genuine), P(fraud)."""
        return np.asarray(self._calibration.predict_proba(self._anomaly(x)), dtype=np.float64)


def _logreg() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))


def _tree() -> Any:
    return DecisionTreeClassifier(max_depth=6, min_samples_leaf=10, random_state=SEED)


def _forest() -> Any:
    return RandomForestClassifier(n_estimators=40, max_depth=8, min_samples_leaf=3,
                                  random_state=SEED, n_jobs=1)


def _boosting() -> Any:
    return GradientBoostingClassifier(n_estimators=80, max_depth=3, learning_rate=0.1,
                                      random_state=SEED)


def _bayes() -> Any:
    return GaussianNB()


def _knn() -> Any:
    return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=15,
                                                                weights="distance"))


def _isolation() -> Any:
    return AnomalyScorer()


_BUILDERS: Final[dict[str, tuple[Callable[[], Any], str]]] = {
    "logreg": (_logreg, "logistic regression"),
    "tree": (_tree, "decision tree (depth 6)"),
    "forest": (_forest, "random forest (40 trees)"),
    "boosting": (_boosting, "gradient boosting (80 stages)"),
    "bayes": (_bayes, "Gaussian naive Bayes"),
    "knn": (_knn, "k-nearest neighbours (k=15)"),
    "isolation": (_isolation, "IsolationForest anomaly scorer"),
}
MODEL_KEYS: Final[tuple[str, ...]] = tuple(_BUILDERS)
MODEL_DESCRIPTIONS: Final[Mapping[str, str]] = {k: d for k, (_, d) in _BUILDERS.items()}


@dataclass(frozen=True, slots=True)
class _Fitted:
    estimator: Any
    validation_accuracy: float
    training_seconds: float


class FraudModel:
    """One fraud model, trained lazily and thread-safely on first use.

    ``examples`` defaults to the shipped training set. ``trainings`` counts fits (one per
    instance, however many threads ask at once).
    """

    def __init__(self, key: str, *, examples: Sequence[Transaction] | None = None) -> None:
        if key not in _BUILDERS:
            raise KeyError(f"unknown fraud model {key!r} (known: {', '.join(MODEL_KEYS)})")
        self.key: Final = key
        self.description: Final = MODEL_DESCRIPTIONS[key]
        self._build = _BUILDERS[key][0]
        self._examples = examples
        self._lock = threading.Lock()
        self._fitted: _Fitted | None = None
        self.trainings = 0

    @property
    def is_trained(self) -> bool:
        """Whether the model has been fitted yet (never triggers training)."""
        return self._fitted is not None

    @property
    def validation_accuracy(self) -> float:
        """Accuracy (threshold 0.5) on the held-out quarter of the training set."""
        return self._ready().validation_accuracy

    @property
    def training_seconds(self) -> float:
        """How long the fit took."""
        return self._ready().training_seconds

    def predict(self, transaction: Transaction) -> float:
        """P(fraud) for one transaction, in ``[0, 1]``."""
        return self.predict_many([transaction])[0]

    def predict_many(self, transactions: Iterable[Transaction]) -> list[float]:
        """P(fraud) for each transaction, in order (cheaper than a loop)."""
        batch = list(transactions)
        if not batch:
            return []
        probabilities = self._ready().estimator.predict_proba(feature_matrix(batch))
        return [float(p) for p in np.asarray(probabilities, dtype=np.float64)[:, 1]]

    def _ready(self) -> _Fitted:
        fitted = self._fitted
        if fitted is not None:
            return fitted
        with self._lock:
            # Re-check: another thread may have finished training while we waited.
            if self._fitted is None:
                self._fitted = self._train()
            return self._fitted

    def _train(self) -> _Fitted:
        started = time.perf_counter()
        examples = (self._examples if self._examples is not None
                    else load_training_transactions())
        x, y = feature_matrix(examples), labels(examples)
        x_fit, x_val, y_fit, y_val = train_test_split(
            x, y, test_size=VALIDATION_SHARE, stratify=y, random_state=SEED)
        estimator = self._build()
        estimator.fit(x_fit, y_fit)
        predicted = np.asarray(estimator.predict_proba(x_val), dtype=np.float64)[:, 1] >= 0.5
        accuracy = float(np.mean(predicted == (y_val == 1)))
        self.trainings += 1
        return _Fitted(estimator, accuracy, time.perf_counter() - started)

    def __repr__(self) -> str:
        state = f"val acc {self._fitted.validation_accuracy:.3f}" if self._fitted else "untrained"
        return f"<FraudModel {self.key} ({state})>"


_registry_lock = threading.Lock()
_models: dict[str, FraudModel] = {}


def fraud_model(key: str) -> FraudModel:
    """The process-wide instance of model ``key`` (created once; trains on first use)."""
    model = _models.get(key)
    if model is None:
        with _registry_lock:
            model = _models.get(key)
            if model is None:
                model = _models[key] = FraudModel(key)
    return model
