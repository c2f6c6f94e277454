"""Tests for the content-summary workflow: data, the gate's rules, retries and the fallback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration import Orchestrator, RunStatus, StepStatus, Workflow
from orchestration.llm.providers.base import Usage
from orchestration.llm.providers.local import LocalProvider
from orchestration.testing import embedded_orchestrator
from tasks.content import summaries
from tasks.content.data import generate
from tasks.content.summaries import (
    LOCAL_LABEL,
    extractive_summary,
    is_local_answer,
    repeated_ngram,
    split_sentences,
    summary_problem,
    too_long,
    word_count,
)
from tasks.content.workflow import (
    BASE_TEMPERATURE,
    build_workflow,
    gate_failures,
    raise_temperature,
    run_report,
    summary_gate,
)

Article = dict[str, Any]


@pytest.fixture(scope="module")
def articles() -> list[Article]:
    text = generate.ARTICLES_FILE.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------------- data


def test_generator_is_deterministic() -> None:
    first = generate.generate_articles(20, seed=3)
    assert generate.to_jsonl(first) == generate.to_jsonl(generate.generate_articles(20, seed=3))
    assert generate.generate_articles(20, seed=4) != first


def test_shipped_articles_are_what_the_generator_writes(articles: list[Article]) -> None:
    assert generate.ARTICLES_FILE.read_bytes() == generate.to_jsonl(
        generate.generate_articles()).encode()
    assert len(articles) >= 50
    lengths = [word_count(a["text"]) for a in articles]
    assert all(generate.MIN_WORDS <= n <= generate.MAX_WORDS for n in lengths)
    assert lengths == [a["words"] for a in articles]
    # Varied: short, medium and long pieces, on several topics.
    assert min(lengths) < 200 and max(lengths) > 500
    assert sum(250 <= n < 400 for n in lengths) >= 10
    assert len({a["topic"] for a in articles}) >= 6
    assert len({a["article_id"] for a in articles}) == len(articles)


# ------------------------------------------------------------------------ gate rules


def test_repeated_ngram_finds_a_repeated_four_word_phrase() -> None:
    assert repeated_ngram("The council said yes. Later the council said no.") is None
    assert repeated_ngram("the council said that the council said that") == \
        "the council said that"
    # Case and punctuation do not hide a repeat.
    assert repeated_ngram("Prices rose sharply today; prices, rose sharply TODAY!") == \
        "prices rose sharply today"
    assert repeated_ngram("one two three") is None and repeated_ngram("") is None
    assert repeated_ngram("a b a b", n=2) == "a b"
    with pytest.raises(ValueError):
        repeated_ngram("x", n=0)


def test_too_long_is_more_than_half_the_article() -> None:
    assert not too_long(" ".join(["w"] * 50), 100)
    assert too_long(" ".join(["w"] * 51), 100)
    assert not too_long("short", 3)


def test_local_answer_is_recognised() -> None:
    assert is_local_answer(f"{LOCAL_LABEL} Thanks for reaching out.")
    assert is_local_answer(f"  {LOCAL_LABEL} anything")
    assert not is_local_answer("The council approved a cycle lane network.")


def test_summary_problem_explains_each_rejection() -> None:
    good = "Summit Bank will move to a four-day week after talks with unions."
    assert summary_problem(good, 200) is None
    assert "empty" in (summary_problem("  ", 200) or "")
    assert "local provider" in (summary_problem(f"{LOCAL_LABEL} Thanks.", 200) or "")
    assert "too long" in (summary_problem(good, 20) or "")
    assert "repeated phrase" in (summary_problem(good + " " + good, 200) or "")


def test_gate_passes_good_output_and_names_the_temperature_when_failing() -> None:
    output = {"summary": "A short and fine summary.", "article_words": 200, "temperature": 0.2}
    assert summary_gate(output) is None
    bad = {**output, "summary": "so so so so so so so so", "temperature": 0.5}
    assert summary_gate(bad) == "repeated phrase: 'so so so so' (temperature 0.5)"


def test_extractive_summary_takes_leading_sentences_up_to_a_quarter() -> None:
    text = ("First sentence has five words. Second one also has six words. "
            "Third sentence is here too. Fourth comes last in this text.")
    assert extractive_summary(text, ratio=0.5) == \
        "First sentence has five words. Second one also has six words."
    # The first sentence is always kept; alone too long, it is cut to the budget.
    assert extractive_summary("One two three four five six seven eight.", ratio=0.25) == \
        "One two ..."
    assert split_sentences('He said "yes." Then left! Why? Done.') == \
        ['He said "yes."', "Then left!", "Why?", "Done."]


def test_extractive_summary_passes_the_gate_for_every_article(articles: list[Article]) -> None:
    for article in articles:
        summary = extractive_summary(article["text"])
        words = word_count(article["text"])
        assert summary and article["text"].startswith(summary.split(".")[0])
        assert word_count(summary) <= summaries.EXTRACTIVE_RATIO * words
        assert summary_problem(summary, words) is None, (article["article_id"], summary)


def test_on_retry_raises_the_temperature_by_point_three() -> None:
    error = RuntimeError("gate")
    second = raise_temperature(1, error, {})
    third = raise_temperature(2, error, second)
    assert (second["temperature"], third["temperature"]) == (0.5, 0.8)
    assert raise_temperature(9, error, {"temperature": 1.3})["temperature"] == 1.4  # capped


# ------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    # No real provider, whatever the environment says: every call goes to the local one.
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
            patch.delenv(variable, raising=False)
        with embedded_orchestrator(Path(tmp_path_factory.mktemp("content"))) as orchestrator:
            yield orchestrator


@pytest.fixture(scope="module")
def workflow(app: Orchestrator) -> Workflow:
    return build_workflow(app)


class FakeModel:
    """Stands in for the model behind ``ctx.llm``: records each call's temperature and
    answers with ``answer(call_number, prompt)``, or the local provider's own answer."""

    def __init__(self, answer: Callable[[int, str], str] | None = None) -> None:
        self.temperatures: list[float | None] = []
        self._answer = answer
        self._lock = threading.Lock()
        self._local = LocalProvider.complete

    def complete(self, provider: LocalProvider, messages: list[dict[str, Any]], *,
                 model: str, timeout: float | None, **params: Any) -> tuple[str, Usage]:
        with self._lock:
            self.temperatures.append(params.get("temperature"))
            number = len(self.temperatures)
        if self._answer is None:
            return self._local(provider, messages, model=model, timeout=timeout, **params)
        text = self._answer(number, str(messages[-1]["content"]))
        return text, Usage(prompt_tokens=100, completion_tokens=len(text.split()))


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeModel]:
    def install(answer: Callable[[int, str], str] | None = None) -> FakeModel:
        fake = FakeModel(answer)

        def complete(provider: LocalProvider, messages: list[dict[str, Any]], *, model: str,
                     timeout: float | None, **params: Any) -> tuple[str, Usage]:
            return fake.complete(provider, messages, model=model, timeout=timeout, **params)

        monkeypatch.setattr(LocalProvider, "complete", complete)
        return fake
    return install


def _good_summary(article: Article) -> str:
    return f"{article['title']}: the article reports {split_sentences(article['text'])[0]}"


def test_local_provider_fails_the_gate_three_times_then_falls_back(
        workflow: Workflow, articles: list[Article],
        fake_model: Callable[..., FakeModel]) -> None:
    fake = fake_model()  # records temperatures, answers like the local provider
    article = articles[0]
    result = workflow.run(article=article, timeout=30)

    assert result.status is RunStatus.SUCCEEDED, result.error
    step = result.steps["summarize"]
    assert step.status is StepStatus.FALLBACK and step.attempts == 3
    assert fake.temperatures == [BASE_TEMPERATURE, 0.5, 0.8]
    assert gate_failures(result) == 3 == gate_failures(result, "summarize")
    assert [a["gate"].split(" (temperature ")[1] for a in step.attempt_log] == \
        ["0.2)", "0.5)", "0.8)"]
    assert all("local provider" in a["gate"] for a in step.attempt_log)
    summary = result.outputs["summary"]
    assert summary["source"] == "extractive"
    assert summary["summary"] == extractive_summary(article["text"])
    report = run_report(result)
    assert report["source"] == "extractive" and report["gate_failures"] == 3
    assert report["summarize_status"] == "fallback" and report["article_id"] == 7001
    assert report["compression"] <= 0.25


def test_a_good_summary_passes_the_gate_first_time(
        workflow: Workflow, articles: list[Article],
        fake_model: Callable[..., FakeModel]) -> None:
    article = articles[1]
    fake = fake_model(lambda number, prompt: _good_summary(article))
    result = workflow.run(article=article, timeout=30)

    assert result.status is RunStatus.SUCCEEDED, result.error
    step = result.steps["summarize"]
    assert step.status is StepStatus.SUCCEEDED and step.attempts == 1
    assert step.gate == "passed" and gate_failures(result) == 0
    assert fake.temperatures == [BASE_TEMPERATURE]
    assert result.outputs["summary"]["summary"] == _good_summary(article)
    assert result.outputs["report"]["source"] == "llm"
    assert result.outputs["report"]["temperature"] == BASE_TEMPERATURE


def test_a_looping_answer_is_retried_hotter_and_then_accepted(
        workflow: Workflow, articles: list[Article],
        fake_model: Callable[..., FakeModel]) -> None:
    article = articles[2]

    def answer(number: int, prompt: str) -> str:
        assert article["text"] in prompt
        return "the plan the plan the plan the plan" if number == 1 else _good_summary(article)

    fake = fake_model(answer)
    result = workflow.run(article=article, timeout=30)

    step = result.steps["summarize"]
    assert step.status is StepStatus.SUCCEEDED and step.attempts == 2
    assert gate_failures(result) == 1 and "repeated phrase" in step.attempt_log[0]["gate"]
    assert step.attempt_log[1]["gate"] == "passed"
    assert fake.temperatures == [0.2, 0.5]
    assert result.outputs["summary"]["temperature"] == 0.5
    assert run_report(result)["gate_reasons"][0].startswith("failed: repeated phrase")


def test_a_summary_as_long_as_the_article_is_refused(
        workflow: Workflow, articles: list[Article],
        fake_model: Callable[..., FakeModel]) -> None:
    article = articles[3]
    fake_model(lambda number, prompt: " ".join(article["text"].split()[: article["words"] // 2
                                                                        + 5]))
    result = workflow.run(article=article, timeout=30)

    step = result.steps["summarize"]
    assert step.status is StepStatus.FALLBACK and gate_failures(result) == 3
    assert all("too long" in a["gate"] for a in step.attempt_log)
    assert result.outputs["report"]["source"] == "extractive"


def test_workers_import_the_workflow_and_serve_its_queues() -> None:
    from config import WORKFLOW_MODULES
    from config.queues import QUEUES
    from tasks.content.workflow import content

    # The deployment's default list, what Settings.imports is when ORCH_IMPORTS is unset.
    assert "tasks.content.workflow" in WORKFLOW_MODULES
    queues = {bound.queue for bound in content.validate().steps.values()}
    assert queues == {"model.gpt-4o-mini", "default"}
    assert queues <= {spec.name for spec in QUEUES}
