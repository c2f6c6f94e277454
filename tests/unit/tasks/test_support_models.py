"""Tests for the support-ticket models and their deterministic training data."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import pytest

from tasks.support import models
from tasks.support.data import generate
from tasks.support.models import Prediction, TextClassifier

T = TypeVar("T")

# Measured on the shipped data: category 0.910, urgency 0.847 (fed the predicted category);
# majority-class baselines 0.325 and 0.358. Thresholds sit a little below the measurements.
MIN_CATEGORY_ACCURACY = 0.88
MIN_URGENCY_ACCURACY = 0.80
# Both models must beat "always answer the most common label" by a wide margin.
MIN_MARGIN_OVER_MAJORITY = 0.35


def _accuracy(predicted: list[str], expected: list[str]) -> float:
    return sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)


def _majority_rate(labels: list[str]) -> float:
    return Counter(labels).most_common(1)[0][1] / len(labels)


def _run_concurrently(count: int, work: Callable[[], T]) -> list[T]:
    """Run ``work`` in ``count`` threads released together; return results, re-raise errors."""
    barrier = threading.Barrier(count)
    results: list[T | None] = [None] * count
    errors: list[BaseException] = []

    def runner(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work()
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    assert all(not thread.is_alive() for thread in threads)
    return [result for result in results if result is not None]


@pytest.fixture(scope="module")
def sample() -> list[dict[str, object]]:
    return models.load_sample_tickets()


# ----------------------------------------------------------------------------- accuracy


def test_category_model_beats_threshold_and_majority_baseline(
    sample: list[dict[str, object]],
) -> None:
    expected = [str(t["category"]) for t in sample]
    predicted = [
        p.label for p in models.category_model().predict_many(str(t["text"]) for t in sample)
    ]

    accuracy = _accuracy(predicted, expected)
    baseline = _majority_rate(expected)
    assert accuracy >= MIN_CATEGORY_ACCURACY, f"category accuracy {accuracy:.3f}"
    assert accuracy >= baseline + MIN_MARGIN_OVER_MAJORITY, (accuracy, baseline)
    assert accuracy > 1 / len(generate.CATEGORIES) + MIN_MARGIN_OVER_MAJORITY


def test_urgency_model_beats_threshold_and_majority_baseline(
    sample: list[dict[str, object]],
) -> None:
    texts = [str(t["text"]) for t in sample]
    expected = [str(t["urgency"]) for t in sample]
    categories = [p.label for p in models.category_model().predict_many(texts)]
    predicted = [
        p.label
        for p in models.urgency_model().predict_many(
            models.urgency_input(text, category)
            for text, category in zip(texts, categories, strict=True)
        )
    ]

    accuracy = _accuracy(predicted, expected)
    baseline = _majority_rate(expected)
    assert accuracy >= MIN_URGENCY_ACCURACY, f"urgency accuracy {accuracy:.3f}"
    assert accuracy >= baseline + MIN_MARGIN_OVER_MAJORITY, (accuracy, baseline)
    assert accuracy > 1 / len(generate.URGENCIES) + MIN_MARGIN_OVER_MAJORITY


def test_convenience_functions_match_the_models(sample: list[dict[str, object]]) -> None:
    for ticket in sample[:20]:
        text = str(ticket["text"])
        category = models.predict_category(text)
        urgency = models.predict_urgency(text, category.label)

        assert category == models.category_model().predict(text)
        assert urgency == models.urgency_model().predict(f"{category.label} | {text}")
        assert category.label in generate.CATEGORIES
        assert urgency.label in generate.URGENCIES
        assert 0.0 <= category.confidence <= 1.0
        assert 0.0 <= urgency.confidence <= 1.0


def test_models_expose_every_label() -> None:
    assert set(models.category_model().labels) == set(generate.CATEGORIES)
    assert set(models.urgency_model().labels) == set(generate.URGENCIES)


def test_prediction_is_frozen() -> None:
    prediction = Prediction(label="bug", confidence=0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prediction.label = "billing"  # type: ignore[misc]


# ------------------------------------------------------------------------- determinism


def test_fresh_instances_give_identical_predictions(sample: list[dict[str, object]]) -> None:
    texts = [str(t["text"]) for t in sample[:150]]
    first, second = TextClassifier("category"), TextClassifier("category")
    assert first.predict_many(texts) == second.predict_many(texts)

    urgency_inputs = [models.urgency_input(text, "bug") for text in texts]
    first_u = TextClassifier("urgency", input_builder=lambda t: f"{t['category']} | {t['text']}")
    second_u = TextClassifier("urgency", input_builder=lambda t: f"{t['category']} | {t['text']}")
    assert first_u.predict_many(urgency_inputs) == second_u.predict_many(urgency_inputs)


def test_training_is_lazy_and_counted() -> None:
    classifier = TextClassifier("category")
    assert not classifier.is_trained
    assert classifier.trainings == 0

    classifier.predict("I was charged twice for the Pro plan")
    classifier.predict("The dashboard shows a blank page")
    assert classifier.is_trained
    assert classifier.trainings == 1
    assert classifier.training_seconds > 0
    assert classifier.predict_many([]) == []


# ------------------------------------------------------------------------- concurrency


def test_concurrent_first_use_trains_once(sample: list[dict[str, object]]) -> None:
    texts = [str(t["text"]) for t in sample[:40]]
    classifier = TextClassifier("category")

    results = _run_concurrently(8, lambda: classifier.predict_many(texts))

    assert classifier.trainings == 1
    assert len(results) == 8
    assert all(result == results[0] for result in results)
    assert results[0] == TextClassifier("category").predict_many(texts)


def test_process_wide_accessors_return_one_instance_per_model() -> None:
    categories = _run_concurrently(8, models.category_model)
    urgencies = _run_concurrently(8, models.urgency_model)

    assert all(model is categories[0] for model in categories)
    assert all(model is urgencies[0] for model in urgencies)
    assert categories[0] is models.category_model()
    assert categories[0] is not urgencies[0]
    assert categories[0].trainings <= 1
    assert urgencies[0].trainings <= 1


# ---------------------------------------------------------------------------- data


def test_generator_is_deterministic() -> None:
    first = generate.generate_tickets(300, seed=123)
    second = generate.generate_tickets(300, seed=123)
    assert first == second
    assert generate.to_jsonl(first) == generate.to_jsonl(second)
    assert generate.generate_tickets(300, seed=124) != first
    assert generate.generate_sample_tickets(50) == generate.generate_sample_tickets(50)


def test_shipped_files_match_the_generator() -> None:
    training = generate.to_jsonl(
        generate.generate_tickets(generate.TRAINING_SIZE, generate.TRAINING_SEED)
    )
    sample = generate.to_jsonl(generate.generate_sample_tickets())

    assert generate.TRAINING_FILE.read_bytes() == training.encode()
    assert generate.SAMPLE_FILE.read_bytes() == sample.encode()
    assert generate.TRAINING_FILE.stat().st_size < 1_000_000
    assert generate.SAMPLE_FILE.stat().st_size < 1_000_000


def test_shipped_data_schema() -> None:
    training = models.load_training_tickets()
    sample = models.load_sample_tickets()

    assert len(training) == 1200
    assert len(sample) == 600
    assert all(set(t) == {"text", "category", "urgency"} for t in training)
    assert all(set(t) == {"ticket_id", "text", "category", "urgency"} for t in sample)
    assert [t["ticket_id"] for t in sample] == list(range(10001, 10601))
    for ticket in training + sample:
        assert ticket["category"] in generate.CATEGORIES
        assert ticket["urgency"] in generate.URGENCIES
        assert isinstance(ticket["text"], str) and ticket["text"].strip()
    # Every label occurs often enough to be learnable.
    assert min(Counter(t["category"] for t in training).values()) >= 100
    assert min(Counter(t["urgency"] for t in training).values()) >= 60


def test_load_sample_tickets_limit() -> None:
    assert [t["ticket_id"] for t in models.load_sample_tickets(limit=3)] == [10001, 10002, 10003]
    assert models.load_sample_tickets(limit=0) == []
    with pytest.raises(ValueError):
        models.load_sample_tickets(limit=-1)
