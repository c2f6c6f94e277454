"""The content-summary workflow: an LLM summary behind a quality gate, then a report.

::

    summarize (LLM, gated, 3 attempts, temperature 0.2 -> 0.5 -> 0.8) -> report

``summarize`` asks ``ctx.llm`` for a summary of about a fifth of the article at
``temperature = ctx.params.get("temperature", 0.2)``. Its gate (:func:`summary_gate`)
rejects a summary that is longer than half the article, repeats a 4-word phrase, or is the
local provider's labelled stand-in (what every call returns when no LLM is configured).
A rejected summary is a failed attempt: :func:`raise_temperature` (the step's
``on_retry``) makes the next attempt 0.3 hotter, and after the third rejection the
fallback :func:`extractive_fallback` answers with the article's leading sentences (the
step's status is then ``fallback``). With no LLM configured the workflow therefore still
produces a sensible summary, and the run records why the LLM's answers were refused.

``report`` describes the summary that was kept. How many attempts the gate refused is
not something a step can see (its own failed attempts are recorded by the engine, not
passed on), so it is read from the run record: :func:`gate_failures` and
:func:`run_report` take a finished :class:`~orchestration.RunResult`.

``content = build_workflow()`` is the module-level instance workers import; tests build
their own with ``build_workflow(app=orchestrator)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from orchestration import Orchestrator, RunResult, StepContext, Workflow
from tasks.content.summaries import extractive_summary, summary_problem, word_count

__all__ = [
    "BASE_TEMPERATURE",
    "MAX_TEMPERATURE",
    "MODEL",
    "TEMPERATURE_STEP",
    "build_workflow",
    "content",
    "extractive_fallback",
    "gate_failures",
    "raise_temperature",
    "report",
    "run_report",
    "summarize",
    "summary_gate",
]

MODEL: Final = "gpt-4o-mini"
BASE_TEMPERATURE: Final = 0.2
TEMPERATURE_STEP: Final = 0.3
MAX_TEMPERATURE: Final = 1.4
SUMMARY_RETRIES: Final = 2
SUMMARY_TIMEOUT_S: Final = 60.0
SUMMARY_BACKOFF_S: Final = 0.2
TARGET_RATIO: Final = 0.2
GATE_FAILED_PREFIX: Final = "failed"

PROMPT: Final = (
    "Summarise the following article in at most {limit} words, in plain prose. Keep the "
    "key facts (who, what, where, figures); do not repeat yourself and add nothing that is "
    "not in the article.\n\nTitle: {title}\n\n{text}"
)

Article = Mapping[str, Any]
Summary = dict[str, Any]


def _text(article: Article) -> str:
    text = article.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the article has no text")
    return text


def summarize(article: dict[str, Any], ctx: StepContext) -> Summary:
    """An LLM summary of ``article`` (``title``, ``text``) at the attempt's temperature."""
    text = _text(article)
    article_words = word_count(text)
    temperature = float(ctx.params.get("temperature", BASE_TEMPERATURE))
    limit = max(15, int(TARGET_RATIO * article_words))
    prompt = PROMPT.format(limit=limit, title=article.get("title", ""), text=text)
    completion = ctx.llm.complete(prompt, temperature=temperature)
    summary = completion.text.strip()
    return {"summary": summary, "source": "llm", "model": completion.model,
            "temperature": temperature, "article_words": article_words,
            "summary_words": word_count(summary)}


def summary_gate(output: Mapping[str, Any]) -> str | None:
    """The quality gate over :func:`summarize`'s output: None to pass, else the reason."""
    problem = summary_problem(str(output.get("summary", "")), int(output["article_words"]))
    if problem is None:
        return None
    return f"{problem} (temperature {output.get('temperature')})"


def raise_temperature(attempt: int, error: BaseException, params: dict[str, Any]
                      ) -> dict[str, Any]:
    """``on_retry``: the next attempt samples 0.3 hotter (capped at 1.4)."""
    current = float(params.get("temperature", BASE_TEMPERATURE))
    return {**params, "temperature": round(min(MAX_TEMPERATURE, current + TEMPERATURE_STEP), 2)}


def extractive_fallback(article: dict[str, Any]) -> Summary:
    """The fallback: the article's leading sentences, up to about 25% of its words."""
    text = _text(article)
    summary = extractive_summary(text)
    return {"summary": summary, "source": "extractive", "model": None, "temperature": None,
            "article_words": word_count(text), "summary_words": word_count(summary)}


def report(article: dict[str, Any], summary: Summary) -> dict[str, Any]:
    """What was kept for the article: where the summary came from and how short it is."""
    article_words = int(summary["article_words"])
    return {
        "article_id": article.get("article_id"),
        "title": article.get("title"),
        "source": summary["source"],
        "model": summary.get("model"),
        "temperature": summary.get("temperature"),
        "article_words": article_words,
        "summary_words": int(summary["summary_words"]),
        "compression": round(int(summary["summary_words"]) / max(1, article_words), 3),
    }


def build_workflow(app: Orchestrator | None = None, *, name: str = "content_summary"
                   ) -> Workflow:
    """Declare the content-summary workflow on ``app`` (default: the process's orchestrator)."""
    workflow = Workflow(name, inputs=["article"], app=app)
    workflow.task(name="summarize", output="summary", model=MODEL, retries=SUMMARY_RETRIES,
                  timeout=SUMMARY_TIMEOUT_S, backoff=SUMMARY_BACKOFF_S, gate=summary_gate,
                  on_retry=raise_temperature, fallback=extractive_fallback)(summarize)
    workflow.task(queue="default")(report)
    return workflow


def gate_failures(result: RunResult, step: str | None = None) -> int:
    """How many attempts of the run (or of ``step``) a quality gate refused."""
    return sum(
        1
        for record in result.steps.values() if step is None or record.name == step
        for attempt in record.attempt_log
        if str(attempt.get("gate") or "").startswith(GATE_FAILED_PREFIX)
    )


def run_report(result: RunResult) -> dict[str, Any]:
    """The ``report`` step's output with what only the run record knows: the summarize
    step's status and attempts, and how many of them the gate refused (and why)."""
    step = result.steps["summarize"]
    reasons = [str(a["gate"]) for a in step.attempt_log
               if str(a.get("gate") or "").startswith(GATE_FAILED_PREFIX)]
    return {
        **(result.outputs.get("report") or {}),
        "run_status": str(result.status),
        "summarize_status": str(step.status),
        "attempts": step.attempts,
        "gate_failures": gate_failures(result, "summarize"),
        "gate_reasons": reasons,
    }


content = build_workflow()
