"""The resume-processing workflow: parse a resume, score the candidate in a batch, route.

::

    parse_resume -> skills -> score_candidate (batch_size=10) -> route_candidate

- ``parse_resume`` finds the skills a resume names (a fixed vocabulary, word-bounded, case
  and separator tolerant) and its years of experience ("7 years", "7+ yrs").
- ``score_candidate`` is declared ``batch_size=10, batch_wait=0.5``: the engine collects
  the parsed skills of up to ten runs and calls it once with a list, the way the
  articles' pipeline scores candidates in batches of ten. It scores each candidate
  against the role (:data:`REQUIRED` count twice as much as :data:`PLUS`, experience up
  to :data:`FULL_YEARS`) with :func:`fit`, a pure function; a deployment that scores with
  a model would send the ten candidates in one prompt from here (see bench/batching.py).
- ``route_candidate`` turns the score into ``interview`` (from :data:`INTERVIEW_AT`),
  ``review`` (from :data:`REVIEW_AT`) or ``reject``.

``resumes = build_workflow()`` is the module-level instance workers import; tests build
their own with ``build_workflow(app=orchestrator, name=...)``.
"""

from __future__ import annotations

import re
from typing import Any, Final

from orchestration import Orchestrator, Workflow

__all__ = ["FULL_YEARS", "INTERVIEW_AT", "PLUS", "REQUIRED", "REVIEW_AT", "build_workflow",
           "decide", "fit", "parse", "resumes"]

REQUIRED: Final = ("python", "postgresql", "distributed systems", "message queues", "on-call")
PLUS: Final = ("kubernetes", "go", "observability")
VOCABULARY: Final = (*REQUIRED, *PLUS, "java", "react", "typescript", "aws", "terraform",
                     "spark", "django", "fastapi", "redis", "celery")
FULL_YEARS: Final = 8
INTERVIEW_AT: Final = 0.7
REVIEW_AT: Final = 0.45
BATCH_SIZE: Final = 10
_YEARS = re.compile(r"(\d{1,2})\s*\+?\s*(?:years?|yrs?)\b", re.I)


def parse(resume: str) -> dict[str, Any]:
    """The skills of :data:`VOCABULARY` a resume names, and its years of experience."""
    text = f" {_words(resume)} "
    skills = [skill for skill in VOCABULARY if f" {_words(skill)} " in text]
    years = max((int(match) for match in _YEARS.findall(resume)), default=0)
    return {"skills": skills, "years": years}


def _words(text: str) -> str:
    return re.sub(r"[^a-z0-9+#]+", " ", text.lower()).strip()


def fit(skills: dict[str, Any]) -> dict[str, Any]:
    """A candidate's fit in 0..1: required skills weigh twice the pluses, then experience."""
    named = set(skills.get("skills") or [])
    required = sum(skill in named for skill in REQUIRED) / len(REQUIRED)
    plus = sum(skill in named for skill in PLUS) / len(PLUS)
    years = min(int(skills.get("years") or 0), FULL_YEARS) / FULL_YEARS
    score = round(0.6 * required + 0.2 * plus + 0.2 * years, 3)
    return {"score": score, "missing": [skill for skill in REQUIRED if skill not in named]}


def decide(score: float) -> str:
    """``interview``, ``review`` or ``reject`` for a fit score."""
    if score >= INTERVIEW_AT:
        return "interview"
    return "review" if score >= REVIEW_AT else "reject"


def build_workflow(app: Orchestrator | None = None, name: str = "resume_processing",
                   batch_wait: float = 0.5) -> Workflow:
    """The workflow (on ``app``, or the default orchestrator); ``batch_wait``: how long a
    partly filled batch waits for more candidates."""
    flow = Workflow(name, inputs=["candidate_id", "resume"], app=app)

    @flow.task(output="skills", retries=1)
    def parse_resume(resume: str) -> dict[str, Any]:
        return parse(resume)

    @flow.task(depends_on=parse_resume, batch_size=BATCH_SIZE, batch_wait=batch_wait,
               retries=1)
    def score_candidate(skills: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [fit(candidate) for candidate in skills]

    @flow.task(depends_on=score_candidate, output="decision")
    def route_candidate(candidate_id: int, score_candidate: dict[str, Any]) -> dict[str, Any]:
        return {"candidate_id": candidate_id, "score": score_candidate["score"],
                "decision": decide(score_candidate["score"]),
                "missing": score_candidate["missing"]}

    return flow


resumes = build_workflow()
