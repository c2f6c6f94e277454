"""Token counts offline, corrected by reported usage; utilisation on every call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestration.core import metrics
from orchestration.core.results import CallRecord
from orchestration.llm.catalogue import Catalogue
from orchestration.llm.client import LLMClient
from orchestration.llm.resilience import Resilience
from orchestration.llm.tokens import MESSAGE_OVERHEAD, TokenCounter, TokenCounters


def test_documented_estimates() -> None:
    assert TokenCounter("chars/4").count("x" * 10) == 3  # ceil(10 / 4)
    assert TokenCounter("words*1.3").count("one two three") == 4  # ceil(3 * 1.3)
    assert TokenCounter().count("") == 0
    assert TokenCounter().count_messages([{"role": "user", "content": "abcd"}]) == \
        1 + MESSAGE_OVERHEAD
    with pytest.raises(ValueError, match="unknown token estimate"):
        TokenCounter("bytes")


def test_reported_usage_corrects_the_estimate() -> None:
    counter = TokenCounter("chars/4")
    text = "y" * 400  # estimated 100
    for _ in range(30):  # the provider keeps reporting 150 for what we estimate 100
        counter.observe(100, 150)
    assert counter.count(text) == pytest.approx(150, abs=2)
    counter.observe(100, 0)  # no usage reported: nothing learnt
    counter.observe(1, 10_000)  # absurd: clamped, not believed
    assert counter.ratio <= 4.0
    assert TokenCounters({}).get("unknown-model").estimate == "chars/4"


@dataclass
class Site:
    """A stand-in for the step attempt a client calls for."""

    run_id: str = "run"
    step: str = "step"
    model: str | None = None
    deadline: float | None = None
    cost_usd: float = 0.0
    max_cost: float | None = None
    spent_before: float = 0.0
    run_budget: float | None = None
    on_error: Any = None
    calls: list[CallRecord] = field(default_factory=list)

    def run_cost(self) -> float:
        return 0.0

    def remaining(self) -> float | None:
        return None

    def record_call(self, call: CallRecord) -> None:
        self.calls.append(call)
        metrics.record_call(call.model, call.ok, call.breaker, call.context_utilisation)


def test_each_call_records_its_context_window_utilisation() -> None:
    catalogue = Catalogue.model_validate({
        "providers": {"local": {"kind": "local"}},
        "models": {"tiny": {"provider": "local", "context_window": 200, "tokens": "chars/4"}},
        "default_model": "tiny"})
    services = Resilience(catalogue, None)
    site = Site()
    before = metrics.CONTEXT_UTILISATION.labels("tiny")._sum.get()
    LLMClient(site, services).complete("one two three four five six seven eight nine ten")
    call = site.calls[-1]
    # The local provider reports one prompt token per word: 10 of a 200-token window.
    assert call.prompt_tokens == 10 and call.context_utilisation == 0.05
    assert metrics.CONTEXT_UTILISATION.labels("tiny")._sum.get() == pytest.approx(before + 0.05)
    # And what it reported moved the model's estimate toward its own count.
    assert services.tokens.get("tiny").ratio != 1.0
