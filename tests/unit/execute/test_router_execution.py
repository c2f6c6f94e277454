"""Semantic routers at run time: the classifiers (both methods) score every label in 0..1,
are trained once per process, and a router step decides, notes the decision for the
trace, and starts the chosen route's child run.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration import Workflow
from orchestration.define.children import ChildRun
from orchestration.define.intents import RouterSpec
from orchestration.errors import NonRetryableError
from orchestration.execute.intents import IntentModels, intent_models
from orchestration.retrieval.intents import LogisticClassifier, SimilarityClassifier
from orchestration.testing import embedded_orchestrator

EXAMPLES = {
    "billing": ("I was charged twice for my subscription", "refund the payment on my invoice",
                "my credit card was billed again", "the invoice amount is wrong"),
    "technical": ("the app crashes when I open it", "error 500 when saving a report",
                  "the export produces an empty file", "the dashboard does not load"),
    "general": ("what are your opening hours", "thanks for the help",
                "do you have a roadmap", "where is the documentation"),
}


def _spec(method: str, threshold: float = 0.3, **extra: Any) -> RouterSpec:
    return RouterSpec(step="route", text="message", examples=EXAMPLES, threshold=threshold,
                      default="general", method=method, source="examples=", **extra)


@pytest.mark.parametrize("method", ["similarity", "classifier"])
def test_both_methods_score_every_label_and_rank_the_right_one_first(method: str) -> None:
    models = IntentModels()
    for text, label in (("I was billed twice, please refund", "billing"),
                        ("the app crashes with an error", "technical"),
                        ("where can I read the documentation", "general")):
        scores = models.scores(_spec(method), text)
        assert set(scores) == set(EXAMPLES)
        assert all(0.0 <= score <= 1.0 for score in scores.values())
        assert max(scores, key=scores.__getitem__) == label, (text, scores)


def test_a_message_with_no_known_word_scores_zero_by_similarity() -> None:
    scores = SimilarityClassifier(EXAMPLES).scores("zzz qqq")
    assert scores == {"billing": 0.0, "technical": 0.0, "general": 0.0}


def test_classifier_probabilities_sum_to_one() -> None:
    scores = LogisticClassifier(EXAMPLES).scores("the invoice is wrong")
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-3)


def test_a_classifier_is_trained_once_per_process_and_examples() -> None:
    models = IntentModels()
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(
        models.classifier(_spec("similarity")))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(models) == 1 and all(found is results[0] for found in results)
    assert models.classifier(_spec("similarity", threshold=0.9)) is results[0]  # same model
    models.classifier(_spec("classifier"))
    assert len(models) == 2
    assert isinstance(intent_models(), IntentModels) and intent_models() is intent_models()


class FakeContext:
    """What a router step uses of ctx: intents, note, log, run_child."""

    def __init__(self) -> None:
        self.intents = IntentModels()
        self.notes: list[str] = []
        self.log = SimpleNamespace(info=lambda *args, **kwargs: None)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def run_child(self, workflow: Workflow, **inputs: Any) -> ChildRun:
        return ChildRun(workflow, inputs)


def test_a_router_step_outputs_its_decision_and_notes_it(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path) as app:
        wf = Workflow("intents_step", app=app, inputs=["message"])
        router = wf.router("route", text="message", examples=EXAMPLES, default="general",
                           threshold=0.3)
        ctx = FakeContext()
        decision = router.spec.fn(message="my card was charged twice", ctx=ctx)
        assert decision["route"] == "billing" and decision["defaulted"] is False
        assert ctx.notes == [f"routed to 'billing': {decision['confidence']:.2f} >= "
                             "threshold 0.3"]
        unknown = router.spec.fn(message="zzz qqq", ctx=ctx)
        assert (unknown["route"], unknown["defaulted"]) == ("general", True)
        assert ctx.notes[-1].startswith("routed to default 'general': best")
        with pytest.raises(NonRetryableError, match=r"'message' must be text, got int"):
            router.spec.fn(message=7, ctx=ctx)


def test_a_router_with_routes_starts_the_chosen_workflow(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path) as app:
        children = {}
        for label in EXAMPLES:
            child = Workflow(f"intents_child_{label}", app=app, inputs=["message", "lang"])

            @child.task
            def reply(message: str, lang: str = "en") -> str:
                return message

            children[label] = child
        wf = Workflow("intents_routes", app=app, inputs=["message", "lang"])
        router = wf.router("route", text="message", examples=EXAMPLES, default="general",
                           threshold=0.3, routes=children)
        assert router.spec.optional_params == frozenset({"lang"})
        started = router.spec.fn(message="the app crashes on start", lang="fr",
                                 ctx=FakeContext())
        assert isinstance(started, ChildRun)
        assert started.workflow is children["technical"]
        assert started.inputs == {"message": "the app crashes on start", "lang": "fr"}
        fallback = router.spec.fn(message="zzz", ctx=FakeContext())
        assert fallback.workflow is children["general"] and fallback.inputs == {"message": "zzz"}
