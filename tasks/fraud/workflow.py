"""The fraud-voting workflow: seven models score a transaction in parallel, one step votes.

::

    model_logreg ─┐
    model_tree   ─┤
    model_forest ─┤
    model_boosting┼─> aggregate -> {"fraud_probability", "decision", "models_answered", ...}
    model_bayes  ─┤
    model_knn    ─┤
    model_isolation

Each model step runs on the ``model.fraud`` queue (CPU-bound scikit-learn: a prefork
worker pool) with a short timeout and one retry, and is *non-critical*: a model that
finally fails hands ``None`` to the aggregate instead of failing the run. Each step
returns its vote ``{"model", "fraud_probability", "weight"}``, where ``weight`` is the
model's validation accuracy, measured when it was trained; the vote carries its own weight
so the aggregate never has to train a model itself.

Aggregation (:func:`aggregate_votes`, a pure function):

- **weighted vote**, when at least :data:`QUORUM` (4, a majority) of the 7 models
  answered: the weight-averaged fraud probability of the models that answered (so up to
  three models may fail without changing the method; ``build_workflow(quorum=...)``
  changes the quorum);
- **fallback**, when 1-3 answered: the *highest* probability among them, flagged
  ``degraded: true``. With few models left the average is unreliable, so the most
  suspicious opinion wins (failing towards caution, not towards letting fraud through);
- **no answer** at all: decision ``review`` (a person looks at it) with
  ``fraud_probability: None``, ``degraded: true``.

The probability becomes a decision: ``block`` from :data:`BLOCK_AT`, ``review`` from
:data:`REVIEW_AT`, else ``allow``.

``fraud = build_workflow()`` is the module-level instance that workers import; tests build
their own with ``build_workflow(app=orchestrator, name=..., fail_models={...})``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from orchestration import Orchestrator, Workflow
from tasks.fraud.models import MODEL_KEYS, fraud_model

__all__ = [
    "BLOCK_AT",
    "MODEL_STEPS",
    "QUORUM",
    "REVIEW_AT",
    "InjectedModelFailure",
    "aggregate_votes",
    "build_workflow",
    "decide",
    "fraud",
    "vote",
]

QUEUE: Final = "model.fraud"
QUORUM: Final = 4
BLOCK_AT: Final = 0.8
REVIEW_AT: Final = 0.4
MODEL_TIMEOUT_S: Final = 5.0
MODEL_RETRIES: Final = 1
MODEL_BACKOFF_S: Final = 0.05

# Step name -> (model key, output name). The aggregate gathers them all by step name.
MODEL_STEPS: Final[Mapping[str, tuple[str, str]]] = {
    f"model_{key}": (key, f"vote_{key}") for key in MODEL_KEYS
}

Vote = dict[str, Any]


class InjectedModelFailure(RuntimeError):
    """Raised by a model step named in ``build_workflow(fail_models=...)`` (tests, drills)."""


def vote(key: str, transaction: Mapping[str, Any]) -> Vote:
    """One model's vote on a transaction: its fraud probability and its weight."""
    model = fraud_model(key)
    probability = model.predict(transaction)
    return {"model": key, "fraud_probability": round(probability, 6),
            "weight": round(model.validation_accuracy, 6)}


def decide(probability: float | None) -> str:
    """``block`` / ``review`` / ``allow`` for a fraud probability (None: ``review``)."""
    if probability is None:
        return "review"
    if probability >= BLOCK_AT:
        return "block"
    if probability >= REVIEW_AT:
        return "review"
    return "allow"


def aggregate_votes(votes: Mapping[str, Vote | None], *, quorum: int = QUORUM) -> dict[str, Any]:
    """Merge the models' votes (None for a model that failed); see the module docstring.

    ``quorum`` is the fewest answers that still make a weighted vote (at least 1).

    Returns ``fraud_probability`` (float, or None when no model answered), ``decision``,
    ``models_answered``, ``degraded``, ``method`` (``weighted_vote``, ``max_fallback`` or
    ``no_models``) and ``missing`` (the models that did not answer).
    """
    if quorum < 1:
        raise ValueError(f"quorum must be >= 1, got {quorum}")
    answered = {name: v for name, v in votes.items() if v is not None}
    missing = sorted(name for name, v in votes.items() if v is None)
    probability: float | None
    if len(answered) >= quorum:
        total = sum(float(v["weight"]) for v in answered.values())
        probability = sum(float(v["weight"]) * float(v["fraud_probability"])
                          for v in answered.values()) / total
        method, degraded = "weighted_vote", False
    elif answered:
        probability = max(float(v["fraud_probability"]) for v in answered.values())
        method, degraded = "max_fallback", True
    else:
        probability, method, degraded = None, "no_models", True
    return {
        "fraud_probability": None if probability is None else round(probability, 6),
        "decision": decide(probability),
        "models_answered": len(answered),
        "degraded": degraded,
        "method": method,
        "missing": missing,
    }


def _model_step(key: str, step_name: str, fail: bool) -> Callable[..., Vote]:
    def score(transaction: dict[str, Any]) -> Vote:
        if fail:
            raise InjectedModelFailure(f"{step_name}: failure injected for testing")
        return vote(key, transaction)

    score.__name__ = score.__qualname__ = step_name
    score.__doc__ = f"The {key} model's vote on the transaction."
    return score


def _aggregate_step(quorum: int) -> Callable[..., dict[str, Any]]:
    def aggregate_models(results: dict[str, Vote | None]) -> dict[str, Any]:
        """The fraud verdict from whichever models answered (None: that model failed).

        ``results`` is ``{model step: vote}`` of every model step (``gather="results"``).
        """
        return aggregate_votes(results, quorum=quorum)

    return aggregate_models


def build_workflow(app: Orchestrator | None = None, *, name: str = "fraud_voting",
                   fail_models: Collection[str] = (), quorum: int = QUORUM) -> Workflow:
    """Declare the fraud-voting workflow on ``app`` (default: the process's orchestrator).

    ``fail_models`` names model steps (``"model_knn"``, ...) that always raise
    :class:`InjectedModelFailure`, to exercise degraded runs; give such a workflow its own
    ``name``. ``quorum`` is the fewest answering models for a weighted vote.
    """
    if not 1 <= quorum <= len(MODEL_STEPS):
        raise ValueError(f"quorum must be between 1 and {len(MODEL_STEPS)}, got {quorum}")
    unknown = sorted(set(fail_models) - set(MODEL_STEPS))
    if unknown:
        raise ValueError(f"unknown model step(s) {', '.join(unknown)}; "
                         f"known: {', '.join(MODEL_STEPS)}")
    workflow = Workflow(name, inputs=["transaction"], queue=QUEUE, app=app)
    models = [
        workflow.task(name=step_name, output=output, critical=False, timeout=MODEL_TIMEOUT_S,
                      retries=MODEL_RETRIES, backoff=MODEL_BACKOFF_S, queue=QUEUE)(
            _model_step(key, step_name, step_name in fail_models))
        for step_name, (key, output) in MODEL_STEPS.items()
    ]
    # A business rule over the votes: cheap, so it runs with the other rules on `default`.
    # gather="results": every model's vote arrives as one mapping, keyed by step name.
    workflow.task(name="aggregate", queue="default", fallback=_no_verdict, depends_on=models,
                  gather="results")(_aggregate_step(quorum))
    return workflow


def _no_verdict(results: dict[str, Vote | None]) -> dict[str, Any]:
    """If aggregation itself breaks (a malformed vote), a person reviews the transaction."""
    return {"fraud_probability": None, "decision": "review",
            "models_answered": sum(v is not None for v in results.values()), "degraded": True,
            "method": "aggregate_failed", "missing": []}


fraud = build_workflow()
