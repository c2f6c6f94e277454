"""Options other frameworks (and the articles) spell differently: answered, not guessed at.

An unknown option that is a known other spelling raises a ``WorkflowDefinitionError``
naming this project's equivalent, or saying plainly that the feature is not built yet,
instead of a near-miss suggestion (``batch_size`` is not ``chunk_size``).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any, Final

from orchestration.errors import WorkflowDefinitionError

NOT_BUILT: Final = "not built yet"
_HERE: Final = "this project spells it"

STEP_SPELLINGS: Final[Mapping[str, str]] = {
    "timeout_seconds": f"{_HERE} timeout (seconds per attempt: timeout=30)",
    "max_retries": f"{_HERE} retries (retries=3: up to 4 attempts)",
    "retry_delay": f"{_HERE} backoff (seconds, or Backoff(initial=..., maximum=...))",
    "on_failure": (f"{_HERE} on_error (actions per error kind: on_error={{'error': 'skip'}}) "
                   "or fallback (a value, or a function of the step's arguments, used when "
                   "the step finally fails)"),
    "cost_tracker": (f"{_HERE} max_cost (a USD cap per step); a step reports its own spend "
                     "with ctx.record_cost(usd), which counts toward max_cost and the run's "
                     "budget"),
    "upstream": f"{_HERE} gather (gather='results': every depends_on output as one mapping)",
}

WORKFLOW_SPELLINGS: Final[Mapping[str, str]] = {
    "cost_tracker": (f"{_HERE} budget (a USD cap per run); steps take max_cost, and a step "
                     "reports its own spend with ctx.record_cost(usd)"),
    "timeout_seconds": f"{_HERE} timeout, an option of each step (@wf.task(timeout=30))",
    "max_retries": f"{_HERE} retries, an option of each step (@wf.task(retries=3))",
    "on_failure": f"{_HERE} on_error or fallback, options of each step",
}


def spelled_here(option: str, spellings: Mapping[str, str]) -> str | None:
    """What an unknown option is called in this project, as an error's tail (None: unknown)."""
    equivalent = spellings.get(option)
    if equivalent is None:
        return None
    return f"unknown option {option!r}: {equivalent}"


def check_workflow_options(name: str, unknown: Mapping[str, Any], known: Collection[str]) -> None:
    """Raise for options ``Workflow(...)`` does not take, naming what exists instead."""
    if not unknown:
        return
    option = sorted(unknown)[0]
    answer = spelled_here(option, WORKFLOW_SPELLINGS)
    if answer is None:
        close = difflib.get_close_matches(option, sorted(known), n=1)
        answer = f"unknown option {option!r}" + (f" (did you mean {close[0]!r}?)" if close
                                                  else f"; options: {', '.join(sorted(known))}")
    raise WorkflowDefinitionError(f"workflow {name!r}: {answer}")
